//! The one output filter: what a request keeps of the graph's top-k. `codetr-serve`'s
//! responses and `codetr-train predict` apply this same rule to the same outputs.

use std::collections::HashSet;

/// Default minimum score of a returned detection (`codetr-serve`'s `[detect]
/// score_threshold`, `codetr-train predict --score-threshold`).
pub const DEFAULT_SCORE_THRESHOLD: f32 = 0.3;

/// One kept row of the graph's `labels` / `scores` / `boxes`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Kept {
    /// Index into [`crate::ModelMetadata::classes`].
    pub class_id: usize,
    /// Score in [0, 1].
    pub score: f32,
    /// xyxy in original-image pixels.
    pub bbox: [f32; 4],
}

/// The rows, in graph order (descending score), whose score is at least `threshold` and whose
/// label is a class index (non-negative) in `classes` when that is given; at most `max` of
/// them. Extra entries of the longer slices are ignored.
pub fn keep<'a>(
    labels: &'a [i64],
    scores: &'a [f32],
    boxes: &'a [[f32; 4]],
    threshold: f32,
    classes: Option<&'a HashSet<usize>>,
    max: usize,
) -> impl Iterator<Item = Kept> + 'a {
    labels
        .iter()
        .zip(scores)
        .zip(boxes)
        .filter_map(move |((&label, &score), &bbox)| {
            let class_id = usize::try_from(label).ok()?;
            let wanted = score >= threshold && classes.is_none_or(|c| c.contains(&class_id));
            wanted.then_some(Kept {
                class_id,
                score,
                bbox,
            })
        })
        .take(max)
}

/// A class's display name: its entry in `names`, or `class_{id}` past their end.
pub fn class_name(names: &[String], class_id: usize) -> String {
    names
        .get(class_id)
        .cloned()
        .unwrap_or_else(|| format!("class_{class_id}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_by_score_class_and_count_in_order() {
        let labels = [2, 0, 1, -1, 2, 0];
        let scores = [0.9, 0.8, 0.5, 0.45, 0.3, 0.29];
        let boxes: Vec<[f32; 4]> = (0..6).map(|i| [i as f32, 0.0, 1.0, 1.0]).collect();
        let ids = |v: Vec<Kept>| v.iter().map(|k| k.bbox[0] as usize).collect::<Vec<_>>();
        let all = keep(&labels, &scores, &boxes, DEFAULT_SCORE_THRESHOLD, None, 100);
        // 0.29 is below the threshold; the negative label is no class
        assert_eq!(ids(all.collect()), [0, 1, 2, 4]);
        let two = keep(&labels, &scores, &boxes, 0.0, None, 2);
        assert_eq!(ids(two.collect()), [0, 1]);
        let only: HashSet<usize> = [0].into();
        let zeros = keep(&labels, &scores, &boxes, 0.0, Some(&only), 100);
        assert_eq!(ids(zeros.collect()), [1, 5]);
        let k = keep(&labels, &scores, &boxes, 0.85, None, 100).collect::<Vec<_>>();
        assert_eq!(
            k,
            [Kept {
                class_id: 2,
                score: 0.9,
                bbox: [0.0, 0.0, 1.0, 1.0]
            }]
        );
    }

    #[test]
    fn class_names_fall_back_to_the_index() {
        let names = vec!["cat".to_string()];
        assert_eq!(class_name(&names, 0), "cat");
        assert_eq!(class_name(&names, 3), "class_3");
    }
}
