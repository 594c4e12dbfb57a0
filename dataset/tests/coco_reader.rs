//! The strict COCO reader: what it accepts, what it converts, and the error it gives for each
//! kind of bad input (naming file, image id, annotation id and field).

use std::path::{Path, PathBuf};

use codetr_data::coco::decode_rgb;
use codetr_data::error::{CocoLocation, Error};
use codetr_data::{CocoDataset, CocoFile, LoadOptions};
use serde_json::json;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// A valid two-image dataset in a temp dir; `edit` may break the json before it is written.
fn write_dataset(edit: impl FnOnce(&mut serde_json::Value)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    image::RgbImage::from_pixel(64, 48, image::Rgb([10, 20, 30]))
        .save(images.join("a.png"))
        .unwrap();
    image::RgbImage::from_pixel(32, 32, image::Rgb([200, 20, 30]))
        .save(images.join("b.jpg"))
        .unwrap();
    let mut v = json!({
        "images": [
            {"id": 7, "file_name": "a.png", "width": 64, "height": 48},
            {"id": 9, "file_name": "b.jpg", "width": 32, "height": 32}
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 12, "bbox": [1, 2, 10, 20], "area": 150.0, "iscrowd": 0},
            {"id": 2, "image_id": 7, "category_id": 3, "bbox": [30, 10, 34.5, 38], "iscrowd": 1},
            {"id": 5, "image_id": 9, "category_id": 12, "bbox": [0, 0, 32, 32]}
        ],
        "categories": [
            {"id": 12, "name": "star"},
            {"id": 3, "name": "circle", "supercategory": "shape"}
        ]
    });
    edit(&mut v);
    let path = dir.path().join("instances.json");
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    (dir, path)
}

fn load(path: &Path) -> Result<CocoDataset, Error> {
    CocoDataset::load(
        path,
        &path.parent().unwrap().join("images"),
        LoadOptions::default(),
    )
}

/// Asserts the error is a `Coco` error at the given ids and field.
fn assert_coco_err(
    r: Result<CocoDataset, Error>,
    image_id: Option<u64>,
    annotation_id: Option<u64>,
    field: &str,
) {
    match r {
        Err(Error::Coco {
            at,
            field: f,
            message,
        }) => {
            let CocoLocation {
                file,
                image_id: i,
                annotation_id: a,
            } = at.clone();
            assert!(file.ends_with("instances.json"), "{file:?}");
            assert_eq!((i, a, f), (image_id, annotation_id, field), "{message}");
            let text = Error::Coco {
                at,
                field: f,
                message,
            }
            .to_string();
            assert!(
                text.contains("instances.json") && text.contains(field),
                "{text}"
            );
        }
        other => panic!("expected a Coco error on `{field}`, got {other:?}"),
    }
}

#[test]
fn valid_dataset_loads_with_contiguous_labels_by_ascending_id() {
    let (_d, p) = write_dataset(|_| {});
    let ds = load(&p).unwrap();
    assert_eq!(ds.class_names(), vec!["circle", "star"]);
    assert_eq!(ds.categories[0].id, 3);
    assert_eq!(ds.categories[1].label, 1);
    assert_eq!(ds.images.len(), 2);
    let a = &ds.images[0];
    assert_eq!((a.id, a.width, a.height), (7, 64, 48));
    assert_eq!(a.objects.len(), 2);
    assert_eq!(a.objects[0].label, 1);
    assert_eq!(a.objects[0].bbox, [1.0, 2.0, 11.0, 22.0]);
    assert_eq!(a.objects[0].area, 150.0);
    // Overshoot by 0.5 px is within tolerance and clipped; area defaults to w*h; crowd kept.
    assert_eq!(a.objects[1].bbox, [30.0, 10.0, 64.0, 48.0]);
    assert_eq!(a.objects[1].area, 34.5 * 38.0);
    assert!(a.objects[1].iscrowd);
    assert!(!ds.images[1].objects[0].iscrowd);
}

#[test]
fn raw_file_round_trips() {
    let (_d, p) = write_dataset(|_| {});
    let f = CocoFile::read(&p).unwrap();
    let out = p.with_file_name("copy.json");
    f.write(&out).unwrap();
    assert_eq!(CocoFile::read(&out).unwrap(), f);
}

#[test]
fn duplicate_ids_are_rejected() {
    let (_d, p) = write_dataset(|v| v["images"][1]["id"] = json!(7));
    assert_coco_err(load(&p), Some(7), None, "id");
    let (_d, p) = write_dataset(|v| v["annotations"][2]["id"] = json!(1));
    assert_coco_err(load(&p), Some(9), Some(1), "id");
    let (_d, p) = write_dataset(|v| v["categories"][1]["id"] = json!(12));
    assert_coco_err(load(&p), None, None, "categories.id");
}

#[test]
fn dangling_references_are_rejected() {
    let (_d, p) = write_dataset(|v| v["annotations"][0]["image_id"] = json!(99));
    assert_coco_err(load(&p), Some(99), Some(1), "image_id");
    let (_d, p) = write_dataset(|v| v["annotations"][0]["category_id"] = json!(4));
    assert_coco_err(load(&p), Some(7), Some(1), "category_id");
}

#[test]
fn bad_boxes_are_rejected() {
    for (bbox, why) in [
        (json!([1, 2, 0, 5]), "zero width"),
        (json!([1, 2, 5, -1]), "negative height"),
        (json!([1, 2, 5]), "three numbers"),
        (json!([60, 2, 10, 5]), "outside right"),
        (json!([-3, 2, 10, 5]), "outside left"),
        (json!([1, 40, 10, 20]), "outside bottom"),
    ] {
        let (_d, p) = write_dataset(|v| v["annotations"][0]["bbox"] = bbox.clone());
        let r = load(&p);
        assert!(r.is_err(), "{why} accepted");
        assert_coco_err(r, Some(7), Some(1), "bbox");
    }
    let (_d, p) = write_dataset(|v| v["annotations"][0]["area"] = json!(-1.0));
    assert_coco_err(load(&p), Some(7), Some(1), "area");
}

#[test]
fn bad_image_records_are_rejected() {
    let (_d, p) = write_dataset(|v| v["images"][0]["width"] = json!(0));
    assert_coco_err(load(&p), Some(7), None, "width/height");
    let (_d, p) = write_dataset(|v| v["images"][0]["file_name"] = json!("/etc/passwd"));
    assert_coco_err(load(&p), Some(7), None, "file_name");
    let (_d, p) = write_dataset(|v| v["categories"] = json!([]));
    assert_coco_err(load(&p), None, None, "categories");
}

#[test]
fn missing_unreadable_or_mismatched_images_name_the_file_and_id() {
    let (_d, p) = write_dataset(|v| v["images"][1]["file_name"] = json!("nope.jpg"));
    match load(&p) {
        Err(Error::Image { path, image_id, .. }) => {
            assert!(path.ends_with("nope.jpg"));
            assert_eq!(image_id, 9);
        }
        other => panic!("{other:?}"),
    }
    let (d, p) = write_dataset(|_| {});
    std::fs::write(d.path().join("images/b.jpg"), b"this is not a jpeg").unwrap();
    assert!(matches!(load(&p), Err(Error::Image { image_id: 9, .. })));
    let (_d, p) = write_dataset(|v| v["images"][1]["width"] = json!(31));
    let e = load(&p).unwrap_err().to_string();
    assert!(e.contains("32x32") && e.contains("31x32"), "{e}");
    // Without image checks the json alone loads.
    let (_d, p) = write_dataset(|v| v["images"][1]["file_name"] = json!("nope.jpg"));
    let ds = CocoDataset::load(
        &p,
        Path::new("/nonexistent"),
        LoadOptions {
            check_images: false,
        },
    );
    assert!(ds.is_ok());
}

#[test]
fn malformed_json_names_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("instances.json");
    std::fs::write(&p, b"{\"images\": [").unwrap();
    let e = load(&p).unwrap_err();
    assert!(matches!(e, Error::Json { .. }));
    assert!(e.to_string().contains("instances.json"));
    assert!(matches!(
        load(&dir.path().join("missing.json")),
        Err(Error::Io { .. })
    ));
}

#[test]
fn exif_orientation_is_applied() {
    // Stored 24x16 with a red marker top-left; orientation 6 rotates it 90° clockwise.
    let img = decode_rgb(&fixture("exif_rot90.jpg"), 1).unwrap();
    assert_eq!(img.dimensions(), (16, 24));
    let red = |p: &image::Rgb<u8>| p[0] > 180 && p[1] < 90 && p[2] < 90;
    assert!(red(img.get_pixel(14, 1)), "{:?}", img.get_pixel(14, 1));
    assert!(!red(img.get_pixel(1, 1)));
}

#[test]
fn cmyk_and_greyscale_jpegs_become_rgb() {
    let img = decode_rgb(&fixture("cmyk.jpg"), 1).unwrap();
    assert_eq!(img.dimensions(), (24, 16));
    let p = img.get_pixel(1, 1);
    assert!(
        p[0] > 180 && p[1] < 90 && p[2] < 90,
        "CMYK marker decoded as {p:?}"
    );
    let bg = img.get_pixel(20, 10);
    assert!(
        bg[2] > 150 && bg[0] < 100,
        "CMYK background decoded as {bg:?}"
    );
    let g = decode_rgb(&fixture("grey.jpg"), 1).unwrap();
    let p = g.get_pixel(20, 10);
    assert!(p[0] == p[1] && p[1] == p[2]);
}

#[test]
fn sixteen_bit_grey_and_alpha_pngs_become_rgb() {
    let dir = tempfile::tempdir().unwrap();
    let p16 = dir.path().join("a16.png");
    image::ImageBuffer::<image::Rgb<u16>, _>::from_pixel(5, 4, image::Rgb([65535u16, 0, 32896]))
        .save(&p16)
        .unwrap();
    let img = decode_rgb(&p16, 1).unwrap();
    assert_eq!(img.get_pixel(0, 0), &image::Rgb([255, 0, 128]));
    let pa = dir.path().join("la.png");
    image::ImageBuffer::<image::LumaA<u8>, _>::from_pixel(3, 3, image::LumaA([77u8, 10]))
        .save(&pa)
        .unwrap();
    assert_eq!(
        decode_rgb(&pa, 1).unwrap().get_pixel(2, 2),
        &image::Rgb([77, 77, 77])
    );
}
