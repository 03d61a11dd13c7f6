//! Images and datasets: loading, letterboxing.

pub mod letterbox;
