//! Decode + resize speed of the server's own path ([`decode::decode`] + [`decode::resize`]:
//! zune-jpeg via `image`, fast_image_resize bilinear) on the same files the Pillow peer
//! decodes (bench/preprocess_pillow.py) — issue goal P5: ours ÷ Pillow ≤ 1.0.
//!
//! `cargo bench -p codetr-serve --bench preprocess -- --images DIR --size 256 [--rounds 5]
//!  [--json out.json]`

use std::time::Instant;

use codetr_serve::decode;

fn arg(args: &[String], name: &str) -> Option<String> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let Some(dir) = arg(&args, "--images") else {
        eprintln!("preprocess: pass --images DIR (see bench/serve.sh); nothing measured");
        return Ok(());
    };
    let size: u32 = arg(&args, "--size").map_or(Ok(256), |s| s.parse())?;
    let rounds: usize = arg(&args, "--rounds").map_or(Ok(5), |s| s.parse())?;
    let mut files: Vec<_> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "jpg" || e == "jpeg"))
        .collect();
    files.sort();
    let data: Vec<Vec<u8>> = files.iter().map(std::fs::read).collect::<Result<_, _>>()?;
    anyhow::ensure!(!data.is_empty(), "{dir}: no JPEGs");
    let mut resizer = fast_image_resize::Resizer::new();
    let (mut t_dec, mut t_res, mut n) = (0.0f64, 0.0f64, 0usize);
    let mut dims = (0, 0);
    for round in 0..=rounds {
        for bytes in &data {
            let t = Instant::now();
            let img = decode::decode(bytes, 100_000_000)?;
            let d = t.elapsed().as_secs_f64();
            let t = Instant::now();
            let px = decode::resize(
                &img,
                size,
                size,
                codetr_model::Resize::Stretch,
                None,
                &mut resizer,
            )?;
            let r = t.elapsed().as_secs_f64();
            std::hint::black_box(px);
            dims = (img.width, img.height);
            // Round 0 warms caches and is not counted.
            if round > 0 {
                t_dec += d;
                t_res += r;
                n += 1;
            }
        }
    }
    let report = serde_json::json!({
        "impl": "codetr-serve (image/zune-jpeg + fast_image_resize)",
        "images": data.len(), "size": dims, "out": size, "samples": n,
        "decode_ms": 1e3 * t_dec / n as f64,
        "resize_ms": 1e3 * t_res / n as f64,
        "total_ms": 1e3 * (t_dec + t_res) / n as f64,
    });
    eprintln!("ours: {report}");
    match arg(&args, "--json") {
        Some(p) => std::fs::write(&p, serde_json::to_vec_pretty(&report)?)?,
        None => println!("{report}"),
    }
    Ok(())
}
