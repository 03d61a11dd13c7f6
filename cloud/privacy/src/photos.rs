//! The photographs compiled into the binary (`cloud/privacy/assets/photos/`: public domain, CC0, CC BY
//! and MIT photos from the scikit-image, scikit-learn, matplotlib and deepforest wheels; see the README
//! there for each one's source and licence), so the default evaluation needs no download.

/// Photos the attacks are scored on and re-identified among; never used to train an attack.
pub const HELDOUT: [(&str, &[u8]); 33] = [
    ("astronaut", include_bytes!("../assets/photos/heldout/astronaut.png")),
    ("awpe-0", include_bytes!("../assets/photos/heldout/awpe-0.png")),
    ("awpe-1", include_bytes!("../assets/photos/heldout/awpe-1.png")),
    ("awpe-10", include_bytes!("../assets/photos/heldout/awpe-10.png")),
    ("awpe-11", include_bytes!("../assets/photos/heldout/awpe-11.png")),
    ("awpe-2", include_bytes!("../assets/photos/heldout/awpe-2.png")),
    ("awpe-3", include_bytes!("../assets/photos/heldout/awpe-3.png")),
    ("awpe-4", include_bytes!("../assets/photos/heldout/awpe-4.png")),
    ("awpe-5", include_bytes!("../assets/photos/heldout/awpe-5.png")),
    ("awpe-6", include_bytes!("../assets/photos/heldout/awpe-6.png")),
    ("awpe-7", include_bytes!("../assets/photos/heldout/awpe-7.png")),
    ("awpe-8", include_bytes!("../assets/photos/heldout/awpe-8.png")),
    ("awpe-9", include_bytes!("../assets/photos/heldout/awpe-9.png")),
    ("chelsea", include_bytes!("../assets/photos/heldout/chelsea.png")),
    ("china-0", include_bytes!("../assets/photos/heldout/china-0.png")),
    ("china-1", include_bytes!("../assets/photos/heldout/china-1.png")),
    ("coffee", include_bytes!("../assets/photos/heldout/coffee.png")),
    ("flower-0", include_bytes!("../assets/photos/heldout/flower-0.png")),
    ("flower-1", include_bytes!("../assets/photos/heldout/flower-1.png")),
    ("grace_hopper", include_bytes!("../assets/photos/heldout/grace_hopper.png")),
    ("osbs029-0", include_bytes!("../assets/photos/heldout/osbs029-0.png")),
    ("osbs029-1", include_bytes!("../assets/photos/heldout/osbs029-1.png")),
    ("osbs029-2", include_bytes!("../assets/photos/heldout/osbs029-2.png")),
    ("osbs029-3", include_bytes!("../assets/photos/heldout/osbs029-3.png")),
    ("rocket", include_bytes!("../assets/photos/heldout/rocket.png")),
    ("soap031-0", include_bytes!("../assets/photos/heldout/soap031-0.png")),
    ("soap031-1", include_bytes!("../assets/photos/heldout/soap031-1.png")),
    ("soap031-2", include_bytes!("../assets/photos/heldout/soap031-2.png")),
    ("soap031-3", include_bytes!("../assets/photos/heldout/soap031-3.png")),
    ("soap061-0", include_bytes!("../assets/photos/heldout/soap061-0.png")),
    ("soap061-1", include_bytes!("../assets/photos/heldout/soap061-1.png")),
    ("soap061-2", include_bytes!("../assets/photos/heldout/soap061-2.png")),
    ("soap061-3", include_bytes!("../assets/photos/heldout/soap061-3.png")),
];

/// The attacker's auxiliary photos (random crops train the inversion decoder).
pub const AUX: [(&str, &[u8]); 9] = [
    ("brick", include_bytes!("../assets/photos/aux/brick.png")),
    ("camera", include_bytes!("../assets/photos/aux/camera.png")),
    ("coins", include_bytes!("../assets/photos/aux/coins.png")),
    ("grass", include_bytes!("../assets/photos/aux/grass.png")),
    ("gravel", include_bytes!("../assets/photos/aux/gravel.png")),
    ("hubble_deep_field", include_bytes!("../assets/photos/aux/hubble_deep_field.png")),
    ("ihc", include_bytes!("../assets/photos/aux/ihc.png")),
    ("retina", include_bytes!("../assets/photos/aux/retina.png")),
    ("yell_541000", include_bytes!("../assets/photos/aux/yell_541000.png")),
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
