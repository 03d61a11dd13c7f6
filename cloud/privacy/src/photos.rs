//! The photographs compiled into the binary (`cloud/privacy/assets/photos/`, public domain / CC0, from
//! scikit-image's bundled data; see the README there), so the default evaluation needs no download.

/// Photos the attacks are scored on; never used to train an attack.
pub const HELDOUT: [(&str, &[u8]); 4] = [
    ("astronaut", include_bytes!("../assets/photos/heldout/astronaut.png")),
    ("chelsea", include_bytes!("../assets/photos/heldout/chelsea.png")),
    ("coffee", include_bytes!("../assets/photos/heldout/coffee.png")),
    ("rocket", include_bytes!("../assets/photos/heldout/rocket.png")),
];

/// The attacker's auxiliary photos (random crops train the inversion decoder).
pub const AUX: [(&str, &[u8]); 8] = [
    ("brick", include_bytes!("../assets/photos/aux/brick.png")),
    ("camera", include_bytes!("../assets/photos/aux/camera.png")),
    ("coins", include_bytes!("../assets/photos/aux/coins.png")),
    ("grass", include_bytes!("../assets/photos/aux/grass.png")),
    ("gravel", include_bytes!("../assets/photos/aux/gravel.png")),
    ("hubble_deep_field", include_bytes!("../assets/photos/aux/hubble_deep_field.png")),
    ("ihc", include_bytes!("../assets/photos/aux/ihc.png")),
    ("retina", include_bytes!("../assets/photos/aux/retina.png")),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_photo_decodes_as_a_square_rgb_image() {
        for (name, bytes) in HELDOUT.iter().chain(AUX.iter()) {
            let img = image::load_from_memory(bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(img.width(), img.height(), "{name}");
        }
    }
}
