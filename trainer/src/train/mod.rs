//! Co-DETR training: the training-time model (detector + training-only heads), the per-step
//! losses, the optimizer (AdamW groups + global grad-norm clip), the run config and `fit`.

pub mod branches;
pub mod codetr;
pub mod config;
pub mod denoising;
pub mod ema;
pub mod fit;
pub mod loss_scale;
pub mod optim;
pub mod plot;
pub mod terms;
