//! Co-DETR's one-to-many auxiliary branch (training only): the multi-scale adapter on the
//! encoder output, the ATSS head with its assigner, and the customized positive queries built
//! from the heads' positive anchors. (The folder is not called `aux`: that name is reserved on
//! Windows and would break checkouts there.)

pub mod adapter;
pub mod atss_assigner;
pub mod atss_head;
pub mod official;
pub mod positive_queries;
pub mod rcnn_targets;
pub mod roi_align_plan;
pub mod roi_head;
pub mod rpn_head;
