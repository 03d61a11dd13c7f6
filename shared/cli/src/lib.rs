//! `mistnet-cli`: the flag groups `mistnet-edge` and `mistnet-cloud` share, each a
//! `#[derive(clap::Args)]` struct defined once, with one set of defaults, and validated where it is
//! parsed or turned into settings (model and cut, image size, privacy mechanism and ε, device and
//! precision, the gRPC client's server, token and TLS files, the edge agent's run). Every group renders itself back to argv
//! ([`argv::ToArgs`]), which is how `mistnet-cloud job` builds its children's command lines.
//! Also the binaries' log setup ([`logging`]); the library crates depend on neither clap nor
//! tracing-subscriber.

pub mod argv;
pub mod client;
pub mod device;
pub mod edge;
pub mod image;
pub mod ldp;
pub mod logging;
pub mod model;

pub use argv::{Argv, ToArgs};
pub use client::ClientArgs;
pub use device::{DeviceArgs, PrecisionArgs};
pub use edge::PrivacyArgs;
pub use image::ImageSizeArgs;
pub use ldp::LdpArgs;
pub use model::{CutArgs, FrontArgs, ModelArgs};
