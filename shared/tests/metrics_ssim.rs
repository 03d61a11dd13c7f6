//! SSIM, MSE and PSNR against scikit-image 0.26 (`tests/fixtures/ssim/ssim_cases.json`, made with
//! `ssim_ref.py`'s calls on the image pairs under `tests/fixtures/ssim/images/`).

use std::path::PathBuf;

use mistnet::metrics::ssim::ssim_maps;
use mistnet::metrics::{ImageF32, SsimConfig, mse, psnr, ssim};
use serde_json::Value;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/ssim").join(name)
}

/// Loads a PNG as scikit-image's oracle does: 8-bit grey stays grey, everything else is RGB.
fn load(name: &str) -> ImageF32 {
    let img = image::open(fixture(name)).unwrap();
    match img {
        image::DynamicImage::ImageLuma8(g) => ImageF32::from_gray(&g),
        other => ImageF32::from_rgb(&other.to_rgb8()),
    }
}

fn cases() -> Vec<Value> {
    let text = std::fs::read_to_string(fixture("ssim_cases.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    json["cases"].as_array().unwrap().clone()
}

fn assert_close(got: f64, want: f64, tol: f64, what: &str) {
    assert!((got - want).abs() <= tol, "{what}: got {got}, want {want} (diff {:e})", (got - want).abs());
}

#[test]
fn every_case_matches_scikit_image() {
    let cases = cases();
    assert_eq!(cases.len(), 7);
    for case in &cases {
        let name = case["name"].as_str().unwrap();
        let a = load(case["a"].as_str().unwrap());
        let b = load(case["b"].as_str().unwrap());
        let shape: Vec<usize> =
            case["shape"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as usize).collect();
        assert_eq!(
            (a.height(), a.width(), a.channels()),
            (shape[0], shape[1], shape.get(2).copied().unwrap_or(1)),
            "{name}"
        );

        let gauss = SsimConfig::default();
        assert_close(
            ssim(&a, &b, &gauss).unwrap(),
            case["ssim_gauss"].as_f64().unwrap(),
            1e-9,
            &format!("{name} ssim_gauss"),
        );
        let default = SsimConfig::skimage_default();
        assert_close(
            ssim(&a, &b, &default).unwrap(),
            case["ssim_default"].as_f64().unwrap(),
            1e-9,
            &format!("{name} ssim_default"),
        );
        if let Some(per_channel) = case.get("ssim_gauss_per_channel") {
            let got = mistnet::metrics::ssim::ssim_per_channel(&a, &b, &gauss).unwrap();
            for (c, want) in per_channel.as_array().unwrap().iter().enumerate() {
                assert_close(got[c], want.as_f64().unwrap(), 1e-9, &format!("{name} channel {c}"));
            }
        }
        assert_close(mse(&a, &b).unwrap(), case["mse"].as_f64().unwrap(), 1e-9, &format!("{name} mse"));
        let got_psnr = psnr(&a, &b, 255.0).unwrap();
        match case["psnr"].as_f64() {
            Some(want) => assert_close(got_psnr, want, 1e-9, &format!("{name} psnr")),
            None => assert_eq!(got_psnr, f64::INFINITY, "{name}: identical images have infinite PSNR"),
        }
    }
}

#[test]
fn valid_window_map_matches_scikit_image() {
    let case = cases().into_iter().find(|c| c["name"] == "c11_random16_gray").unwrap();
    let a = load(case["a"].as_str().unwrap());
    let b = load(case["b"].as_str().unwrap());
    let maps = ssim_maps(&a, &b, &SsimConfig::default()).unwrap();
    assert_eq!(maps.len(), 1);
    assert_eq!((maps[0].height, maps[0].width), (6, 6));
    let want = case["ssim_gauss_valid_map"]["values"].as_array().unwrap();
    assert_eq!(maps[0].values.len(), want.len());
    for (i, (got, want)) in maps[0].values.iter().zip(want).enumerate() {
        assert_close(*got, want.as_f64().unwrap(), 1e-12, &format!("map[{i}]"));
    }
}
