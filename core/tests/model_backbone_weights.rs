//! Loading torchvision-format ResNet weights: the key mapping (incl. the Sequential
//! downsample), ignored classifier/counters, and clear errors for missing, unexpected or
//! misshapen tensors. The file is written here in the safetensors format with torchvision's
//! names, enumerated independently of our module tree.

use std::path::Path;

use burn::tensor::{Device, Tensor};
use codetr_core::model::backbone::ResNetConfig;

/// torchvision ResNet state-dict entries (name, shape) for `depth` at stem width `w`.
fn torchvision_keys(depth: usize, w: usize, classes: usize) -> Vec<(String, Vec<usize>)> {
    let (blocks, bottleneck) = match depth {
        18 => ([2, 2, 2, 2], false),
        50 => ([3, 4, 6, 3], true),
        _ => unreachable!(),
    };
    let mut keys = vec![];
    let bn = |keys: &mut Vec<(String, Vec<usize>)>, p: &str, c: usize| {
        for s in ["weight", "bias", "running_mean", "running_var"] {
            keys.push((format!("{p}.{s}"), vec![c]));
        }
        keys.push((format!("{p}.num_batches_tracked"), vec![]));
    };
    keys.push(("conv1.weight".into(), vec![w, 3, 7, 7]));
    bn(&mut keys, "bn1", w);
    let mut cin = w;
    for (stage, &n) in blocks.iter().enumerate() {
        let planes = w << stage;
        let out = if bottleneck { planes * 4 } else { planes };
        for b in 0..n {
            let p = format!("layer{}.{b}", stage + 1);
            if bottleneck {
                keys.push((format!("{p}.conv1.weight"), vec![planes, cin, 1, 1]));
                bn(&mut keys, &format!("{p}.bn1"), planes);
                keys.push((format!("{p}.conv2.weight"), vec![planes, planes, 3, 3]));
                bn(&mut keys, &format!("{p}.bn2"), planes);
                keys.push((format!("{p}.conv3.weight"), vec![out, planes, 1, 1]));
                bn(&mut keys, &format!("{p}.bn3"), out);
            } else {
                keys.push((format!("{p}.conv1.weight"), vec![planes, cin, 3, 3]));
                bn(&mut keys, &format!("{p}.bn1"), planes);
                keys.push((format!("{p}.conv2.weight"), vec![planes, planes, 3, 3]));
                bn(&mut keys, &format!("{p}.bn2"), planes);
            }
            if b == 0 && (stage > 0 || cin != out) {
                keys.push((format!("{p}.downsample.0.weight"), vec![out, cin, 1, 1]));
                bn(&mut keys, &format!("{p}.downsample.1"), out);
            }
            cin = out;
        }
    }
    keys.push(("fc.weight".into(), vec![classes, cin]));
    keys.push(("fc.bias".into(), vec![classes]));
    keys
}

/// A value that identifies (tensor, element) so a wrong mapping cannot go unnoticed.
fn value(name: &str, i: usize) -> f32 {
    let h = name
        .bytes()
        .fold(7u32, |a, b| a.wrapping_mul(31).wrapping_add(b as u32));
    (h % 1000) as f32 / 1000.0 + (i % 97) as f32 * 1e-3 + 0.5
}

/// Minimal safetensors writer (header JSON + little-endian data).
fn write_safetensors(path: &Path, tensors: &[(String, Vec<usize>)]) {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = vec![];
    for (name, shape) in tensors {
        let n: usize = shape.iter().product();
        let begin = data.len();
        if name.ends_with("num_batches_tracked") {
            data.extend_from_slice(&42i64.to_le_bytes());
            header.insert(name.clone(), serde_json::json!({"dtype": "I64", "shape": shape, "data_offsets": [begin, data.len()]}));
            continue;
        }
        for i in 0..n {
            data.extend_from_slice(&value(name, i).to_le_bytes());
        }
        header.insert(name.clone(), serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()]}));
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

fn first(t: Tensor<1>) -> f32 {
    t.into_data().try_to_vec::<f32>().unwrap()[0]
}

fn cfg(depth: usize, w: usize) -> ResNetConfig {
    ResNetConfig {
        depth,
        frozen_stages: 1,
        out_indices: vec![0, 1, 2, 3],
        base_width: w,
        norm: Default::default(),
    }
}

#[test]
fn torchvision_names_map_onto_resnet18_and_resnet50() {
    let dev = Device::flex();
    for (depth, w) in [(18, 16), (50, 8)] {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.safetensors");
        let keys = torchvision_keys(depth, w, 10);
        write_safetensors(&p, &keys);
        let (m, report) = cfg(depth, w)
            .init(&dev)
            .unwrap()
            .load_torchvision(&p)
            .unwrap();
        let loadable = keys
            .iter()
            .filter(|(k, _)| !k.starts_with("fc.") && !k.ends_with("num_batches_tracked"))
            .count();
        assert_eq!(report.applied, loadable, "ResNet-{depth}");
        assert!(report.ignored.iter().any(|k| k == "fc.weight"));
        // Spot checks, including the Sequential downsample and BN buffers.
        let conv: Vec<f32> = m.backbone_conv1_weight();
        assert_eq!(conv[5], value("conv1.weight", 5));
        let ds = m.layer2[0].downsample.as_ref().expect("layer2 downsamples");
        let w0: Vec<f32> = ds.conv.weight.val().into_data().try_to_vec().unwrap();
        assert_eq!(w0[3], value("layer2.0.downsample.0.weight", 3));
        assert_eq!(
            first(ds.bn.running_var.val()),
            value("layer2.0.downsample.1.running_var", 0)
        );
        assert_eq!(
            first(m.layer4[1].bn2.bias.val()),
            value("layer4.1.bn2.bias", 0)
        );
        if depth == 50 {
            let b3 = m.layer3[5].bn3.as_ref().unwrap();
            assert_eq!(
                first(b3.running_mean.val()),
                value("layer3.5.bn3.running_mean", 0)
            );
        }
    }
}

/// Small accessor so the test reads the stem conv without naming Burn internals twice.
trait Stem {
    fn backbone_conv1_weight(&self) -> Vec<f32>;
}
impl Stem for codetr_core::model::backbone::ResNet {
    fn backbone_conv1_weight(&self) -> Vec<f32> {
        self.conv1.weight.val().into_data().try_to_vec().unwrap()
    }
}

#[test]
fn missing_unexpected_or_misshapen_tensors_are_errors() {
    let dev = Device::flex();
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("r.safetensors");
    let base = torchvision_keys(18, 16, 10);

    let missing: Vec<_> = base
        .iter()
        .filter(|(k, _)| k != "layer3.1.conv2.weight")
        .cloned()
        .collect();
    write_safetensors(&p, &missing);
    let e = cfg(18, 16)
        .init(&dev)
        .unwrap()
        .load_torchvision(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("missing") && e.contains("layer3.1.conv2.weight"),
        "{e}"
    );

    let mut extra = base.clone();
    extra.push(("layer5.0.conv1.weight".into(), vec![4, 4, 1, 1]));
    write_safetensors(&p, &extra);
    let e = cfg(18, 16)
        .init(&dev)
        .unwrap()
        .load_torchvision(&p)
        .unwrap_err()
        .to_string();
    assert!(e.contains("layer5.0.conv1.weight"), "{e}");

    // A ResNet-18 file into a ResNet-18 of another width: shapes do not fit.
    write_safetensors(&p, &base);
    let e = cfg(18, 8)
        .init(&dev)
        .unwrap()
        .load_torchvision(&p)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("do not fit") && e.contains("ShapeMismatch") && e.len() < 600,
        "{e}"
    );

    let e = cfg(18, 16)
        .init(&dev)
        .unwrap()
        .load_torchvision(&dir.path().join("w.bin"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("no such file"), "{e}");
    std::fs::write(dir.path().join("w.bin"), b"x").unwrap();
    let e = cfg(18, 16)
        .init(&dev)
        .unwrap()
        .load_torchvision(&dir.path().join("w.bin"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("unsupported extension"), "{e}");
}

#[test]
fn torchvision_weights_are_refused_for_a_group_norm_backbone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r18.safetensors");
    write_safetensors(&path, &torchvision_keys(18, 16, 10));
    let mut c = cfg(18, 16);
    c.norm = codetr_core::model::backbone::BackboneNorm::GroupNorm;
    let e = c
        .init(&Device::flex())
        .unwrap()
        .load_torchvision(&path)
        .unwrap_err()
        .to_string();
    assert!(e.contains("group_norm"), "{e}");
}
