//! COCO bbox evaluation with pycocotools semantics.
