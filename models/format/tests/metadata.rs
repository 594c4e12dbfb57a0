//! The metadata_props contract: encoding, round trip and every rejection path.

use codetr_model::*;
use serde_json::{Map, Value, json};

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn sample() -> ModelMetadata {
    let Value::Object(metrics) = json!({"AP": 0.51, "AP50": 0.693, "AP_small": 0.34}) else {
        unreachable!()
    };
    ModelMetadata {
        format_version: Resize::Stretch.min_format_version(),
        classes: vec!["person".into(), "bicycle".into(), "traffic light".into()],
        input_size: Some([640, 800]),
        resize: Resize::Stretch,
        mean: [123.675, 116.28, 103.53],
        std: [58.395, 57.12, 57.375],
        max_detections: 300,
        preset: "co_dino_r50".into(),
        checkpoint_sha256: SHA.into(),
        metrics,
        msda: Some(Msda::GridSample),
        precision: Some(Precision::Fp16),
        max_batch: Some(19),
        letterbox_limits: None,
        max_batch_at: Vec::new(),
        size_multiple: None,
    }
}

fn decode(props: &[(String, String)]) -> Result<ModelMetadata, Error> {
    ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str())))
}

/// The sample's props with `key` set to `value` (replacing it, or appended if absent).
fn with(key: &str, value: &str) -> Vec<(String, String)> {
    let mut props = sample().to_props();
    match props.iter_mut().find(|(k, _)| k == key) {
        Some(entry) => entry.1 = value.to_owned(),
        None => props.push((key.to_owned(), value.to_owned())),
    }
    props
}

fn assert_invalid(result: Result<ModelMetadata, Error>, expected_key: &str) {
    match result {
        Err(Error::Invalid { key, message }) => {
            assert_eq!(key, expected_key, "wrong key; message: {message}");
            assert!(!message.is_empty());
        }
        other => panic!("expected Invalid for {expected_key}, got {other:?}"),
    }
}

#[test]
fn io_names_in_graph_order() {
    assert_eq!(INPUTS, ["images", "orig_sizes"]);
    assert_eq!(OUTPUTS, ["labels", "scores", "boxes"]);
}

#[test]
fn encoding_is_exact_and_in_fixed_order() {
    let props = sample().try_to_props().unwrap();
    let expected = [
        ("codetr.format_version", "1"),
        ("codetr.classes", r#"["person","bicycle","traffic light"]"#),
        ("codetr.input_size", "[640,800]"),
        ("codetr.resize", "stretch"),
        ("codetr.mean", "[123.675,116.28,103.53]"),
        ("codetr.std", "[58.395,57.12,57.375]"),
        ("codetr.max_detections", "300"),
        ("codetr.preset", "co_dino_r50"),
        ("codetr.checkpoint_sha256", SHA),
        (
            "codetr.metrics",
            r#"{"AP":0.51,"AP50":0.693,"AP_small":0.34}"#,
        ),
        ("codetr.msda", "grid-sample"),
        ("codetr.precision", "fp16"),
        ("codetr.max_batch", "19"),
    ];
    let got: Vec<(&str, &str)> = props
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(got, expected);
    let keys: Vec<&str> = got.iter().map(|(k, _)| *k).collect();
    let mut expected_keys = METADATA_KEYS.to_vec();
    // every optional key but the letterbox limits and size multiple, which only letterbox
    // graphs carry, and the bounds at named sizes, which only dynamic-size graphs carry (their
    // places, last, are checked in letterbox_limits_are_version_3_letterbox_only_and_checked,
    // max_batch_at_is_version_4_dynamic_only_and_checked and
    // size_multiple_is_a_version_5_letterbox_field)
    expected_keys.extend(OPTIONAL_METADATA_KEYS);
    assert_eq!(expected_keys.pop(), Some(META_SIZE_MULTIPLE));
    assert_eq!(expected_keys.pop(), Some(META_MAX_BATCH_AT));
    assert_eq!(expected_keys.pop(), Some(META_LETTERBOX_LIMITS));
    assert_eq!(keys, expected_keys);
}

#[test]
fn encoding_is_deterministic() {
    // Same metadata built with metrics inserted in a different order → identical bytes.
    let mut reordered = sample();
    let mut metrics = Map::new();
    for (k, v) in sample().metrics.into_iter().rev() {
        metrics.insert(k, v);
    }
    reordered.metrics = metrics;
    assert_eq!(sample().to_props(), reordered.to_props());
    assert_eq!(sample().to_props(), sample().clone().to_props());
}

#[test]
fn round_trip() {
    let meta = sample();
    assert_eq!(decode(&meta.try_to_props().unwrap()).unwrap(), meta);
}

#[test]
fn round_trip_without_optionals_and_dynamic_size() {
    let meta = ModelMetadata {
        input_size: None,
        msda: None,
        precision: None,
        max_batch: None,
        metrics: Map::new(),
        ..sample()
    };
    let props = meta.try_to_props().unwrap();
    assert_eq!(props.len(), METADATA_KEYS.len());
    let lookup = |key: &str| props.iter().find(|(k, _)| k == key).unwrap().1.clone();
    assert_eq!(lookup(META_INPUT_SIZE), "null");
    assert_eq!(lookup(META_METRICS), "{}");
    assert_eq!(decode(&props).unwrap(), meta);
}

#[test]
fn every_enum_value_round_trips() {
    for &msda in Msda::ALL {
        for &precision in Precision::ALL {
            let meta = ModelMetadata {
                msda: Some(msda),
                precision: Some(precision),
                max_batch: None,
                ..sample()
            };
            assert_eq!(decode(&meta.to_props()).unwrap(), meta);
        }
    }
    assert_eq!(Msda::Gather.to_string(), "gather");
    assert_eq!(Precision::Fp32.to_string(), "fp32");
}

#[test]
fn unusual_but_valid_values_round_trip() {
    let meta = ModelMetadata {
        classes: vec![
            "quote \" and \\ backslash".into(),
            "ünïcödé 猫".into(),
            "comma, bracket]".into(),
        ],
        mean: [0.0, 0.1, 255.0],
        std: [1e-3, 1.0, 255.0],
        input_size: Some([MIN_INPUT_SIDE, MAX_INPUT_SIDE]),
        max_detections: MAX_DETECTIONS_LIMIT,
        ..sample()
    };
    assert_eq!(decode(&meta.try_to_props().unwrap()).unwrap(), meta);
    let meta = ModelMetadata {
        max_detections: 1,
        ..sample()
    };
    assert_eq!(decode(&meta.try_to_props().unwrap()).unwrap(), meta);
}

#[test]
fn foreign_keys_are_ignored() {
    let mut props = sample().to_props();
    props.insert(0, ("producer_note".into(), "anything".into()));
    props.push(("onnxruntime.optimized".into(), "1".into()));
    props.push(("codetr".into(), "no dot, not ours".into()));
    assert_eq!(decode(&props).unwrap(), sample());
}

#[test]
fn input_order_does_not_matter() {
    let mut props = sample().to_props();
    props.reverse();
    assert_eq!(decode(&props).unwrap(), sample());
}

#[test]
fn each_missing_required_key_is_reported() {
    for &key in METADATA_KEYS {
        let props: Vec<_> = sample()
            .to_props()
            .into_iter()
            .filter(|(k, _)| k != key)
            .collect();
        match decode(&props) {
            Err(Error::Missing { key: k }) => assert_eq!(k, key),
            other => panic!("removing {key}: expected Missing, got {other:?}"),
        }
    }
}

#[test]
fn unknown_codetr_key_is_rejected() {
    let err = decode(&with("codetr.max_detection", "300")).unwrap_err();
    assert_eq!(
        err,
        Error::Unknown {
            key: "codetr.max_detection".into()
        }
    );
    assert!(err.to_string().contains("codetr.max_detection"));
}

#[test]
fn duplicate_codetr_key_is_rejected() {
    let mut props = sample().to_props();
    props.push((META_PRESET.into(), "other".into()));
    assert_invalid(decode(&props), META_PRESET);
}

#[test]
fn newer_version_says_newer_exporter() {
    let newer = FORMAT_VERSION + 1;
    let err = decode(&with(META_FORMAT_VERSION, &newer.to_string())).unwrap_err();
    assert_eq!(
        err,
        Error::UnsupportedVersion {
            found: newer,
            supported: FORMAT_VERSION
        }
    );
    assert!(err.to_string().contains("newer exporter"), "{err}");
}

#[test]
fn newer_version_wins_over_unknown_keys() {
    let mut props = with(META_FORMAT_VERSION, "7");
    props.push(("codetr.something_new".into(), "x".into()));
    assert!(matches!(
        decode(&props),
        Err(Error::UnsupportedVersion { found: 7, .. })
    ));
}

#[test]
fn older_version_is_unsupported() {
    let err = decode(&with(META_FORMAT_VERSION, "0")).unwrap_err();
    assert!(matches!(err, Error::UnsupportedVersion { found: 0, .. }));
    assert!(!err.to_string().contains("newer exporter"), "{err}");
}

#[test]
fn malformed_integers_are_rejected() {
    for bad in ["", "1.0", "+1", " 1", "one", "-1", "99999999999"] {
        assert_invalid(decode(&with(META_FORMAT_VERSION, bad)), META_FORMAT_VERSION);
    }
    for bad in ["", "3e2", "+300", "300 ", "-5"] {
        assert_invalid(decode(&with(META_MAX_DETECTIONS, bad)), META_MAX_DETECTIONS);
    }
}

#[test]
fn max_detections_range() {
    for bad in ["0", "10001"] {
        assert_invalid(decode(&with(META_MAX_DETECTIONS, bad)), META_MAX_DETECTIONS);
    }
}

#[test]
fn bad_checkpoint_hash() {
    let upper = SHA.to_uppercase();
    let short = &SHA[..63];
    let long = format!("{SHA}0");
    let non_hex = format!("{}g", &SHA[..63]);
    for bad in [upper.as_str(), short, long.as_str(), non_hex.as_str(), ""] {
        assert_invalid(
            decode(&with(META_CHECKPOINT_SHA256, bad)),
            META_CHECKPOINT_SHA256,
        );
    }
}

#[test]
fn bad_classes() {
    for bad in [
        r#"[]"#,                        // empty list
        r#"["person",""]"#,             // empty name
        r#"["person","  "]"#,           // blank name
        r#"["person","car","person"]"#, // duplicate
        r#"["person","car""#,           // bad JSON
        r#"person,car"#,                // not JSON
        r#"["person",3]"#,              // not a string
        r#"{"0":"person"}"#,            // not a list
        "null",
    ] {
        assert_invalid(decode(&with(META_CLASSES, bad)), META_CLASSES);
    }
}

#[test]
fn bad_input_size() {
    for bad in [
        "[15,640]",
        "[640,4097]",
        "[0,0]",
        "[640]",
        "[640,640,3]",
        "640",
        "[-1,640]",
        "[640.5,640]",
        "",
    ] {
        assert_invalid(decode(&with(META_INPUT_SIZE, bad)), META_INPUT_SIZE);
    }
}

#[test]
fn bad_mean_and_std() {
    for bad in [
        "[1,2]",
        "[1,2,3,4]",
        "[1,\"2\",3]",
        "[1,2,NaN]",
        "[1,2,1e39]",
        "",
    ] {
        assert_invalid(decode(&with(META_MEAN, bad)), META_MEAN);
    }
    for bad in ["[58.4,57.1,0]", "[58.4,-57.1,57.4]", "[1,2,1e39]", "[1,2]"] {
        assert_invalid(decode(&with(META_STD, bad)), META_STD);
    }
    // Integers are fine JSON numbers.
    let props = with(META_MEAN, "[128,128,128]");
    assert_eq!(decode(&props).unwrap().mean, [128.0; 3]);
}

#[test]
fn bad_strings_and_enums() {
    for bad in ["letterbox", "\"stretch\"", "Stretch", ""] {
        assert_invalid(decode(&with(META_RESIZE, bad)), META_RESIZE);
    }
    for bad in ["grid_sample", "\"gather\"", ""] {
        assert_invalid(decode(&with(META_MSDA, bad)), META_MSDA);
    }
    for bad in ["bf16", "FP32", ""] {
        assert_invalid(decode(&with(META_PRECISION, bad)), META_PRECISION);
        assert_invalid(decode(&with(META_MAX_BATCH, bad)), META_MAX_BATCH);
    }
    assert_invalid(decode(&with(META_PRESET, "")), META_PRESET);
}

#[test]
fn metrics_must_be_an_object() {
    for bad in ["[0.5]", "0.5", "null", "{", ""] {
        assert_invalid(decode(&with(META_METRICS, bad)), META_METRICS);
    }
    let props = with(META_METRICS, r#"{"AP":0.5,"per_class":{"person":0.6}}"#);
    assert_eq!(decode(&props).unwrap().metrics["per_class"]["person"], 0.6);
}

#[test]
fn validate_guards_the_writer() {
    let cases: Vec<(ModelMetadata, Option<&str>)> = vec![
        (
            ModelMetadata {
                format_version: FORMAT_VERSION + 1,
                ..sample()
            },
            None,
        ),
        (
            ModelMetadata {
                resize: Resize::Letterbox,
                ..sample()
            },
            Some(META_RESIZE),
        ),
        (
            ModelMetadata {
                classes: vec![],
                ..sample()
            },
            Some(META_CLASSES),
        ),
        (
            ModelMetadata {
                input_size: Some([8, 640]),
                ..sample()
            },
            Some(META_INPUT_SIZE),
        ),
        (
            ModelMetadata {
                mean: [f32::NAN, 0.0, 0.0],
                ..sample()
            },
            Some(META_MEAN),
        ),
        (
            ModelMetadata {
                std: [1.0, f32::INFINITY, 1.0],
                ..sample()
            },
            Some(META_STD),
        ),
        (
            ModelMetadata {
                std: [1.0, 1.0, -0.0],
                ..sample()
            },
            Some(META_STD),
        ),
        (
            ModelMetadata {
                max_detections: 0,
                ..sample()
            },
            Some(META_MAX_DETECTIONS),
        ),
        (
            ModelMetadata {
                preset: " ".into(),
                ..sample()
            },
            Some(META_PRESET),
        ),
        (
            ModelMetadata {
                checkpoint_sha256: "abc".into(),
                ..sample()
            },
            Some(META_CHECKPOINT_SHA256),
        ),
    ];
    for (meta, key) in cases {
        let err = meta.try_to_props().unwrap_err();
        assert_eq!(meta.validate().unwrap_err(), err);
        match (key, &err) {
            (None, Error::UnsupportedVersion { found, .. }) if *found == FORMAT_VERSION + 1 => {}
            (Some(key), Error::Invalid { key: k, .. }) if k == &key => {}
            _ => panic!("expected error on {key:?}, got {err:?}"),
        }
        // Anything the writer refuses, the reader refuses too.
        assert!(decode(&meta.to_props()).is_err(), "{meta:?}");
    }
}

#[test]
fn errors_name_the_key() {
    let err = decode(&with(META_CHECKPOINT_SHA256, "nope")).unwrap_err();
    assert!(err.to_string().contains(META_CHECKPOINT_SHA256), "{err}");
    let props: Vec<_> = sample()
        .to_props()
        .into_iter()
        .filter(|(k, _)| k != META_STD)
        .collect();
    let err = decode(&props).unwrap_err();
    assert!(err.to_string().contains(META_STD), "{err}");
}

#[test]
fn letterbox_graphs_are_version_2_and_stretch_graphs_read_at_both_versions() {
    // A version-1 reader knows only stretch; letterbox (with its `valid_sizes` input) came
    // with version 2, and a stretch graph written at version 2 still means stretch.
    let lb = ModelMetadata {
        format_version: Resize::Letterbox.min_format_version(),
        resize: Resize::Letterbox,
        ..sample()
    };
    assert_eq!(lb.format_version, 2);
    assert_eq!(decode(&lb.try_to_props().unwrap()).unwrap(), lb);
    let mut props = lb.to_props();
    props[0].1 = "1".into();
    assert_invalid(decode(&props), META_RESIZE);
    let v2 = ModelMetadata {
        format_version: 2,
        ..sample()
    };
    assert_eq!(decode(&v2.to_props()).unwrap().resize, Resize::Stretch);
    assert_eq!(Resize::Stretch.min_format_version(), 1);
    assert_eq!(Resize::Stretch.inputs(), INPUTS);
    assert_eq!(
        Resize::Letterbox.inputs(),
        ["images", "orig_sizes", "valid_sizes"]
    );
}

#[test]
fn letterbox_limits_are_version_3_letterbox_only_and_checked() {
    let lb = ModelMetadata {
        resize: Resize::Letterbox,
        letterbox_limits: Some([800, 1333]),
        ..sample()
    };
    assert_eq!(lb.min_format_version(), 3);
    let lb = ModelMetadata {
        format_version: lb.min_format_version(),
        ..lb
    };
    let props = lb.try_to_props().unwrap();
    assert_eq!(
        props.last().unwrap(),
        &(META_LETTERBOX_LIMITS.to_owned(), "[800,1333]".to_owned())
    );
    assert_eq!(decode(&props).unwrap(), lb);
    // without limits a letterbox graph stays version 2 (readable by older servers)
    let plain = ModelMetadata {
        letterbox_limits: None,
        ..lb.clone()
    };
    assert_eq!(plain.min_format_version(), 2);
    // a version-2 reader would ignore the limits and letterbox at the wrong scale: refused
    let mut v2 = props.clone();
    v2[0].1 = "2".into();
    assert_invalid(decode(&v2), META_LETTERBOX_LIMITS);
    // limits on a stretch graph, or not [short, long]
    let stretch = ModelMetadata {
        resize: Resize::Stretch,
        ..lb.clone()
    };
    assert_invalid(decode(&stretch.to_props()), META_LETTERBOX_LIMITS);
    for bad in [
        "[1333,800]",
        "[0,10]",
        "[800]",
        "\"800,1333\"",
        "[800,1333,1]",
    ] {
        let mut p = props.clone();
        p.last_mut().unwrap().1 = bad.into();
        assert_invalid(decode(&p), META_LETTERBOX_LIMITS);
    }
}

/// A dynamic-size graph's bounds at named input sizes: version 4, dynamic graphs only, sides in
/// range, each size once; `max_batch_for` reads them (and a fixed graph's `max_batch` at its
/// own size only).
#[test]
fn max_batch_at_is_version_4_dynamic_only_and_checked() {
    let at = |h, w, n| SizeBound {
        input_size: [h, w],
        max_batch: n,
    };
    let dynamic = ModelMetadata {
        input_size: None,
        max_batch_at: vec![at(800, 1333, 11), at(1333, 800, 11)],
        ..sample()
    };
    assert_eq!(dynamic.min_format_version(), 4);
    let dynamic = ModelMetadata {
        format_version: 4,
        ..dynamic
    };
    let props = dynamic.try_to_props().unwrap();
    assert_eq!(
        props.last().unwrap(),
        &(
            META_MAX_BATCH_AT.to_owned(),
            r#"[{"input_size":[800,1333],"max_batch":11},{"input_size":[1333,800],"max_batch":11}]"#
                .to_owned()
        )
    );
    assert_eq!(decode(&props).unwrap(), dynamic);
    assert_eq!(dynamic.max_batch_for([1333, 800]), Some(11));
    assert_eq!(dynamic.max_batch_for([800, 800]), None);
    let fixed = sample();
    assert_eq!(fixed.max_batch_for([640, 800]), Some(19));
    assert_eq!(fixed.max_batch_for([800, 640]), None);
    // Without bounds nothing changes: version 1 for a stretch graph.
    assert_eq!(
        ModelMetadata {
            input_size: None,
            ..sample()
        }
        .min_format_version(),
        1
    );
    // A version-3 reader would ignore them: refused as version 3.
    let mut v3 = props.clone();
    v3[0].1 = "3".into();
    assert_invalid(decode(&v3), META_MAX_BATCH_AT);
    // On a fixed graph (its max_batch is at its size).
    let on_fixed = ModelMetadata {
        input_size: Some([800, 1333]),
        ..dynamic.clone()
    };
    assert_invalid(decode(&on_fixed.to_props()), META_MAX_BATCH_AT);
    for bad in [
        r#"[{"input_size":[8,1333],"max_batch":11}]"#,
        r#"[{"input_size":[800,1333],"max_batch":11},{"input_size":[800,1333],"max_batch":3}]"#,
        r#"[{"input_size":[800,1333]}]"#,
        r#"[{"input_size":[800,1333],"max_batch":-1}]"#,
        r#"[{"input_size":[800,1333],"max_batch":1,"extra":2}]"#,
        r#"{"800x1333":11}"#,
    ] {
        let mut p = props.clone();
        p.last_mut().unwrap().1 = bad.into();
        assert_invalid(decode(&p), META_MAX_BATCH_AT);
    }
}

/// `--letterbox-limits` as every CLI checks it: two values 0 < short <= long, letterbox only.
#[test]
fn letterbox_limits_arguments_are_checked_once() {
    let lb = Resize::Letterbox;
    assert_eq!(lb.limits_from(None), Ok(None));
    assert_eq!(lb.limits_from(Some(&[800, 1333])), Ok(Some([800, 1333])));
    assert_eq!(lb.limits_from(Some(&[800, 800])), Ok(Some([800, 800])));
    for bad in [&[1333u32, 800][..], &[0, 10], &[800], &[800, 1333, 1]] {
        let e = lb.limits_from(Some(bad)).unwrap_err();
        assert!(e.contains("--letterbox-limits"), "{e}");
    }
    assert!(Resize::Stretch.limits_from(Some(&[800, 1333])).is_err());
    assert_eq!(Resize::Stretch.limits_from(None), Ok(None));
}

/// `codetr.size_multiple` (version 5): a letterbox graph's coarsest stride round-trips; an
/// older version, a stretch graph or a value that is no stride is refused; `aligned_size`
/// rounds a canvas up to it.
#[test]
fn size_multiple_is_a_version_5_letterbox_field() {
    let lb = ModelMetadata {
        resize: Resize::Letterbox,
        size_multiple: Some(64),
        ..sample()
    };
    let lb = ModelMetadata {
        format_version: lb.min_format_version(),
        ..lb
    };
    assert_eq!(lb.format_version, 5);
    let props = lb.try_to_props().unwrap();
    assert_eq!(
        props.last().map(|(k, v)| (k.as_str(), v.as_str())),
        Some((META_SIZE_MULTIPLE, "64")),
        "written last"
    );
    assert_eq!(decode(&props).unwrap(), lb);
    assert_eq!(lb.aligned_size([800, 1333]), Some([832, 1344]));
    assert_eq!(lb.aligned_size([832, 1344]), None);
    let mut old = lb.clone();
    old.format_version = 4;
    assert_invalid(decode(&old.to_props()), META_SIZE_MULTIPLE);
    for bad in [
        ModelMetadata {
            resize: Resize::Stretch,
            ..lb.clone()
        },
        ModelMetadata {
            size_multiple: Some(48),
            ..lb.clone()
        },
        ModelMetadata {
            size_multiple: Some(0),
            ..lb.clone()
        },
    ] {
        assert_invalid(decode(&bad.to_props()), META_SIZE_MULTIPLE);
    }
    // a graph without it aligns nothing
    assert_eq!(sample().aligned_size([800, 1333]), None);
}
