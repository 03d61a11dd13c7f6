//! The feature store on its own: exactly once, torn-tail recovery, segment rolling, the read API.

use std::io::Write;

use mistnet_data::Label;
use mistnet_store::{FeatureStore, OnCorruption, Outcome, StoreLimits, StoreWriter, Upload};

fn upload(edge: &str, id: &str) -> Upload {
    Upload {
        edge: edge.into(),
        sample_id: id.into(),
        epsilon: 1.5,
        labels: vec![Label { class: 2, cx: 0.5, cy: 0.5, w: 0.25, h: 0.5 }],
        image_size: (640, 480),
        features: id.as_bytes().repeat(100),
    }
}

fn store_all(writer: &StoreWriter, uploads: Vec<Upload>) -> Vec<Outcome> {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let futures: Vec<_> = uploads.into_iter().map(|u| writer.submit(u)).collect();
        let mut out = Vec::new();
        for f in futures {
            out.push(f.await.unwrap());
        }
        out
    })
}

#[test]
fn stores_each_sample_once_and_reads_it_back() {
    let dir = tempfile::tempdir().unwrap();
    let writer = StoreWriter::open(dir.path(), StoreLimits::default()).unwrap();
    let outcomes = store_all(&writer, vec![upload("a", "1"), upload("a", "2"), upload("a", "1"), upload("b", "1")]);
    assert_eq!(outcomes, [Outcome::Stored, Outcome::Stored, Outcome::Duplicate, Outcome::Stored]);
    assert_eq!(writer.index().edges["a"].per_sample["1"], [1.5, 1.5]);
    writer.close();

    let store = FeatureStore::open(dir.path()).unwrap();
    assert_eq!(store.len(), 3);
    let samples = store.samples().unwrap();
    assert_eq!(samples[0].edge, "a");
    assert_eq!(samples[0].features, b"1".repeat(100));
    assert_eq!(samples[0].labels, upload("a", "1").labels);
    assert_eq!(samples[0].image_size, (640, 480));
    // A second writer on the same directory is refused.
    let _first = StoreWriter::open(dir.path(), StoreLimits::default()).unwrap();
    assert!(StoreWriter::open(dir.path(), StoreLimits::default()).is_err());
}

#[test]
fn a_torn_tail_is_cut_off_on_open_and_the_index_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let writer = StoreWriter::open(dir.path(), StoreLimits::default()).unwrap();
    store_all(&writer, vec![upload("a", "1"), upload("a", "2")]);
    writer.close();
    let segment = dir.path().join("seg-00000001.log");
    let whole = std::fs::metadata(&segment).unwrap().len();
    // A crash in the middle of appending a third record.
    let frame = mistnet_store::record::Record {
        kind: mistnet_store::record::RecordKind::Sample,
        edge: "a".into(),
        sample_id: "3".into(),
        epsilon: 1.0,
        labels: vec![],
        image_size: (1, 1),
        features: vec![0; 50],
    }
    .to_frame();
    std::fs::OpenOptions::new().append(true).open(&segment).unwrap().write_all(&frame[..frame.len() - 10]).unwrap();
    assert_eq!(FeatureStore::open(dir.path()).unwrap().len(), 2, "the reader skips the torn record");

    let writer = StoreWriter::open(dir.path(), StoreLimits::default()).unwrap();
    assert_eq!(std::fs::metadata(&segment).unwrap().len(), whole, "the torn tail is cut off");
    assert_eq!(writer.index().samples(), 2);
    assert_eq!(store_all(&writer, vec![upload("a", "2"), upload("a", "3")]), [Outcome::Duplicate, Outcome::Stored]);
    writer.close();
    assert_eq!(FeatureStore::open(dir.path()).unwrap().len(), 3);
}

#[test]
fn damage_before_the_last_segment_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StoreLimits { segment_bytes: 600, max_batch: 1, ..StoreLimits::default() };
    let writer = StoreWriter::open(dir.path(), limits).unwrap();
    store_all(&writer, (0..6).map(|i| upload("a", &i.to_string())).collect());
    writer.close();
    assert!(dir.path().join("seg-00000002.log").exists(), "segments roll over");
    assert_eq!(FeatureStore::open(dir.path()).unwrap().len(), 6);
    let first = dir.path().join("seg-00000001.log");
    let mut bytes = std::fs::read(&first).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&first, bytes).unwrap();
    let err = FeatureStore::open(dir.path()).unwrap_err().to_string();
    assert!(err.contains("seg-00000001.log") && err.contains("checksum"), "{err}");
}

#[test]
fn quota_and_epsilon_budget_refuse_uploads() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StoreLimits { max_samples_per_edge: Some(2), epsilon_budget: Some(5.0), ..StoreLimits::default() };
    let writer = StoreWriter::open(dir.path(), limits).unwrap();
    let outcomes = store_all(&writer, vec![upload("a", "1"), upload("a", "2"), upload("a", "3"), upload("a", "1"), upload("a", "1")]);
    assert_eq!(&outcomes[..2], [Outcome::Stored, Outcome::Stored]);
    assert!(matches!(outcomes[2], Outcome::Refused(mistnet_store::Refusal::Quota { max: 2, .. })));
    // A refused upload spends nothing: 3 spent, a re-upload makes 4.5 <= 5, the next would make 6 > 5.
    assert_eq!(outcomes[3], Outcome::Duplicate);
    assert!(matches!(outcomes[4], Outcome::Refused(mistnet_store::Refusal::EpsilonBudget { .. })));
    assert_eq!(writer.index().edges["a"].epsilon_total, 4.5);
}

/// A store of `n` samples of edge "a" in one segment, and each record's start offset.
fn store_of(dir: &std::path::Path, n: usize) -> Vec<u64> {
    let writer = StoreWriter::open(dir, StoreLimits::default()).unwrap();
    store_all(&writer, (0..n).map(|i| upload("a", &i.to_string())).collect());
    writer.close();
    let mut offsets = Vec::new();
    mistnet_store::segment::scan(&dir.join("seg-00000001.log"), |_, at| offsets.push(at)).unwrap();
    offsets
}

fn flip(path: &std::path::Path, at: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[at as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn a_flipped_bit_before_valid_records_is_corruption_not_a_torn_tail() {
    for field in [0u64, 4, 30] {
        // In the length, the checksum, or the payload of the 3rd of 20 records.
        let dir = tempfile::tempdir().unwrap();
        let offsets = store_of(dir.path(), 20);
        let segment = dir.path().join("seg-00000001.log");
        let before = std::fs::read(&segment).unwrap();
        flip(&segment, offsets[2] + field);

        // Refused by default, naming the file and the byte; nothing is cut off.
        let err = StoreWriter::open(dir.path(), StoreLimits::default()).err().expect("corruption must be refused").to_string();
        assert!(err.contains("seg-00000001.log") && err.contains(&format!("byte {}", offsets[2])), "{err}");
        assert_eq!(std::fs::metadata(&segment).unwrap().len(), before.len() as u64, "refusing modifies nothing");
        let err = FeatureStore::open(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&format!("byte {}", offsets[2])), "the reader refuses alike: {err}");

        // Quarantine keeps every valid record: the reader skips the damage, the writer sets it aside.
        let read = FeatureStore::open_with(dir.path(), OnCorruption::Quarantine).unwrap();
        assert_eq!(read.len(), 19, "field at +{field}");
        let limits = StoreLimits { on_corruption: OnCorruption::Quarantine, ..StoreLimits::default() };
        let writer = StoreWriter::open(dir.path(), limits).unwrap();
        assert_eq!(writer.index().samples(), 19);
        assert!(!writer.index().edges["a"].contains("2"), "the damaged sample is gone, so its edge can send it again");
        assert_eq!(store_all(&writer, vec![upload("a", "2"), upload("a", "19")]), [Outcome::Stored, Outcome::Duplicate]);
        writer.close();
        let quarantined: Vec<_> = std::fs::read_dir(dir.path().join("quarantine")).unwrap().map(|e| e.unwrap().path()).collect();
        assert_eq!(quarantined.len(), 1);
        let aside = std::fs::read(&quarantined[0]).unwrap();
        assert_eq!(aside.len() as u64, offsets[3] - offsets[2], "exactly the damaged record is set aside");
        let ids: std::collections::BTreeSet<String> = FeatureStore::open(dir.path()).unwrap().samples().unwrap().into_iter().map(|s| s.sample_id).collect();
        assert_eq!(ids.len(), 20, "all 20 samples, the damaged one uploaded again");
    }
}

#[test]
fn a_missing_middle_segment_and_a_duplicated_record_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let limits = StoreLimits { segment_bytes: 600, max_batch: 1, ..StoreLimits::default() };
    let writer = StoreWriter::open(dir.path(), limits).unwrap();
    store_all(&writer, (0..9).map(|i| upload("a", &i.to_string())).collect());
    writer.close();
    let second = dir.path().join("seg-00000002.log");
    assert!(dir.path().join("seg-00000003.log").exists());
    let kept = std::fs::read(&second).unwrap();
    std::fs::remove_file(&second).unwrap();
    for err in [FeatureStore::open(dir.path()).unwrap_err().to_string(), StoreWriter::open(dir.path(), limits).err().unwrap().to_string()] {
        assert!(err.contains("segment 2 is missing"), "{err}");
    }
    std::fs::write(&second, &kept).unwrap();
    assert_eq!(FeatureStore::open(dir.path()).unwrap().len(), 9);

    // The first record of segment 2 appended again to segment 3.
    let mut first = Vec::new();
    mistnet_store::segment::scan(&second, |rec, _| first.push(rec)).unwrap();
    let third = dir.path().join("seg-00000003.log");
    std::fs::OpenOptions::new().append(true).open(&third).unwrap().write_all(&first[0].to_frame()).unwrap();
    for err in [FeatureStore::open(dir.path()).unwrap_err().to_string(), StoreWriter::open(dir.path(), limits).err().unwrap().to_string()] {
        assert!(err.contains("seg-00000003.log") && err.contains("a second record of sample"), "{err}");
    }
}

#[test]
fn a_byte_quota_counts_stored_feature_bytes_per_edge() {
    let dir = tempfile::tempdir().unwrap();
    // Each upload carries 100 feature bytes: 250 allow two samples per edge, not three.
    let limits = StoreLimits { max_bytes_per_edge: Some(250), ..StoreLimits::default() };
    let writer = StoreWriter::open(dir.path(), limits).unwrap();
    let outcomes = store_all(&writer, vec![upload("a", "1"), upload("a", "2"), upload("a", "3"), upload("a", "1"), upload("b", "1")]);
    assert_eq!(&outcomes[..2], [Outcome::Stored, Outcome::Stored]);
    assert!(
        matches!(&outcomes[2], Outcome::Refused(mistnet_store::Refusal::ByteQuota { max: 250, stored: 200, bytes: 100, .. })),
        "{:?}",
        outcomes[2]
    );
    assert_eq!(&outcomes[3..], [Outcome::Duplicate, Outcome::Stored], "a re-upload stores no bytes; another edge has its own quota");
    writer.close();
    let writer = StoreWriter::open(dir.path(), limits).unwrap();
    assert!(matches!(store_all(&writer, vec![upload("a", "4")])[0], Outcome::Refused(mistnet_store::Refusal::ByteQuota { .. })), "the quota holds across a restart");
}
