//! `metrics.prom`: the last epoch's results in the Prometheus text format, rewritten after each
//! epoch, for node_exporter's textfile collector (`--collector.textfile.directory` the run
//! directory) or any scraper of files. The names are the `mistnet_train_*` of the dashboard in
//! `deploy/grafana/`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::encoding::prometheus_text::encode;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use super::EpochRecord;

type FloatGauge = Gauge<f64, AtomicU64>;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Part {
    part: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Iou {
    iou: &'static str,
}

/// `record` as Prometheus text.
pub fn text(record: &EpochRecord) -> String {
    let mut registry = Registry::default();
    let gauge = |registry: &mut Registry, name: &str, help: &str, v: f64| {
        let g = FloatGauge::default();
        g.set(v);
        registry.register(name, help, g);
    };
    gauge(&mut registry, "mistnet_train_epochs_done", "Epochs finished", (record.epoch + 1) as f64);
    let loss = Family::<Part, FloatGauge>::default();
    for (part, v) in [("box", record.box_loss), ("obj", record.obj_loss), ("cls", record.cls_loss), ("total", record.total_loss)] {
        loss.get_or_create(&Part { part }).set(v);
    }
    registry.register("mistnet_train_loss", "Mean training loss of the last epoch, per part", loss);
    let map = Family::<Iou, FloatGauge>::default();
    for (iou, v) in [("0.5", record.metrics.map50), ("0.5:0.95", record.metrics.map50_95)] {
        map.get_or_create(&Iou { iou }).set(v);
    }
    registry.register("mistnet_train_map", "Validation mAP after the last epoch, at IoU 0.5 and averaged over 0.5:0.95", map);
    gauge(&mut registry, "mistnet_train_step_seconds", "Mean time of a training step in the last epoch", record.step_seconds);
    gauge(&mut registry, "mistnet_train_samples_per_second", "Training samples a second in the last epoch", record.samples_per_second);
    gauge(&mut registry, "mistnet_train_epoch_seconds", "Time of the last epoch: training, saving, evaluating", record.seconds);
    let mut text = String::new();
    encode(&mut text, &registry).expect("writing to a String cannot fail");
    text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;
    use crate::fit::eval::Metrics;

    #[test]
    fn the_text_has_every_value_and_the_dashboard_queries_exactly_its_names() {
        let record = EpochRecord {
            epoch: 4,
            box_loss: 0.05,
            obj_loss: 0.02,
            cls_loss: 0.01,
            total_loss: 0.08,
            metrics: Metrics { map50: 0.5, map50_95: 0.25, yolov5_map50: 0.5, yolov5_map50_95: 0.25 },
            lr: [0.01; 3],
            seconds: 12.5,
            step_seconds: 0.75,
            samples_per_second: 21.25,
            samples: Some(40),
        };
        let text = text(&record);
        let samples: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
        for want in [
            "mistnet_train_epochs_done 5.0",
            r#"mistnet_train_loss{part="box"} 0.05"#,
            r#"mistnet_train_loss{part="total"} 0.08"#,
            r#"mistnet_train_map{iou="0.5"} 0.5"#,
            r#"mistnet_train_map{iou="0.5:0.95"} 0.25"#,
            "mistnet_train_step_seconds 0.75",
            "mistnet_train_samples_per_second 21.25",
            "mistnet_train_epoch_seconds 12.5",
        ] {
            assert!(samples.contains(&want), "no {want:?} in\n{text}");
        }
        assert_eq!(samples.len(), 10, "{text}");
        let names = |s: &'_ str| -> BTreeSet<String> {
            s.match_indices("mistnet_train_").map(|(at, _)| s[at..].split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).next().unwrap().to_string()).collect()
        };
        let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../deploy/grafana/mistnet.json")).unwrap();
        assert_eq!(names(&dashboard), names(&text), "deploy/grafana/mistnet.json");
    }
}
