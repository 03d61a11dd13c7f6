//! One record of the feature store: its payload encoding and its framing on disk.
//!
//! Frame: `len: u32 LE | crc32c(payload): u32 LE | payload (len bytes)`.
//! Payload: `kind: u8 | edge: u16-prefixed UTF-8 | sample id: u16-prefixed UTF-8 | ε: f64 LE`,
//! then for a [`RecordKind::Sample`]: `width: u32 | height: u32 | n labels: u32 |
//! n × (class: u32, cx, cy, w, h: f32) | features: u32-prefixed bytes`. All integers little-endian.

use mistnet_data::Label;

use super::writer::Upload;

/// Bytes before the payload: length and checksum.
pub const FRAME_HEADER: usize = 8;
/// Largest payload a record may hold (a sanity bound the scanner enforces before allocating).
pub const MAX_PAYLOAD: usize = 64 << 20;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A newly stored sample: features, labels and image size.
    Sample = 1,
    /// A re-upload of an already stored sample: stores nothing but the ε it spent (the ledger).
    Spend = 2,
}

/// A decoded record.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    pub kind: RecordKind,
    pub edge: String,
    pub sample_id: String,
    /// ε spent by this upload; `+inf` for a message without noise (mechanism none).
    pub epsilon: f64,
    /// Empty for [`RecordKind::Spend`].
    pub labels: Vec<Label>,
    pub image_size: (u32, u32),
    /// The codec wire message; empty for [`RecordKind::Spend`].
    pub features: Vec<u8>,
}

impl Record {
    /// The record of an accepted upload: a [`RecordKind::Sample`] keeps its features, labels and
    /// image size; a [`RecordKind::Spend`] only the edge, sample id and ε.
    pub fn of(kind: RecordKind, upload: Upload) -> Self {
        let Upload { edge, sample_id, epsilon, labels, image_size, features } = upload;
        match kind {
            RecordKind::Sample => Record { kind, edge, sample_id, epsilon, labels, image_size, features },
            RecordKind::Spend => Record { kind, edge, sample_id, epsilon, labels: Vec::new(), image_size: (0, 0), features: Vec::new() },
        }
    }

    /// The framed bytes: header then payload.
    pub fn to_frame(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.write_frame(&mut out);
        out
    }

    /// Appends the framed record to `out`: the payload is written in place and the header
    /// (length, checksum) filled in after it, so the features are copied once.
    pub fn write_frame(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.reserve(FRAME_HEADER + 64 + self.features.len() + 20 * self.labels.len());
        out.extend_from_slice(&[0; FRAME_HEADER]);
        self.write_payload(out);
        let payload = &out[start + FRAME_HEADER..];
        let (len, crc) = (payload.len() as u32, crc32c::crc32c(payload));
        out[start..start + 4].copy_from_slice(&len.to_le_bytes());
        out[start + 4..start + FRAME_HEADER].copy_from_slice(&crc.to_le_bytes());
    }

    fn write_payload(&self, p: &mut Vec<u8>) {
        p.push(self.kind as u8);
        put_str(p, &self.edge);
        put_str(p, &self.sample_id);
        p.extend_from_slice(&self.epsilon.to_le_bytes());
        if self.kind == RecordKind::Sample {
            p.extend_from_slice(&self.image_size.0.to_le_bytes());
            p.extend_from_slice(&self.image_size.1.to_le_bytes());
            p.extend_from_slice(&(self.labels.len() as u32).to_le_bytes());
            for l in &self.labels {
                p.extend_from_slice(&(l.class as u32).to_le_bytes());
                for v in [l.cx, l.cy, l.w, l.h] {
                    p.extend_from_slice(&v.to_le_bytes());
                }
            }
            p.extend_from_slice(&(self.features.len() as u32).to_le_bytes());
            p.extend_from_slice(&self.features);
        }
    }

    /// Parses a payload whose checksum already matched. `Err` names the field that does not parse.
    pub fn from_payload(payload: &[u8]) -> Result<Self, &'static str> {
        let mut r = Reader(payload);
        let kind = match r.u8("kind")? {
            1 => RecordKind::Sample,
            2 => RecordKind::Spend,
            _ => return Err("kind"),
        };
        let edge = r.string("edge")?;
        let sample_id = r.string("sample id")?;
        let epsilon = f64::from_le_bytes(r.take(8, "epsilon")?.try_into().expect("8 bytes"));
        let mut record = Record { kind, edge, sample_id, epsilon, labels: Vec::new(), image_size: (0, 0), features: Vec::new() };
        if kind == RecordKind::Sample {
            record.image_size = (r.u32("image width")?, r.u32("image height")?);
            let n = r.u32("label count")? as usize;
            if n > r.0.len() / 20 {
                return Err("label count");
            }
            for _ in 0..n {
                let class = r.u32("label class")? as usize;
                let mut v = [0f32; 4];
                for x in &mut v {
                    *x = f32::from_le_bytes(r.take(4, "label box")?.try_into().expect("4 bytes"));
                }
                record.labels.push(Label { class, cx: v[0], cy: v[1], w: v[2], h: v[3] });
            }
            let len = r.u32("features length")? as usize;
            record.features = r.take(len, "features")?.to_vec();
        }
        if !r.0.is_empty() {
            return Err("trailing bytes");
        }
        Ok(record)
    }
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], &'static str> {
        if self.0.len() < n {
            return Err(field);
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, &'static str> {
        Ok(self.take(1, field)?[0])
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, &'static str> {
        Ok(u32::from_le_bytes(self.take(4, field)?.try_into().expect("4 bytes")))
    }

    fn string(&mut self, field: &'static str) -> Result<String, &'static str> {
        let len = u16::from_le_bytes(self.take(2, field)?.try_into().expect("2 bytes")) as usize;
        String::from_utf8(self.take(len, field)?.to_vec()).map_err(|_| field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_and_spend_round_trip() {
        let sample = Record {
            kind: RecordKind::Sample,
            edge: "edge-1".into(),
            sample_id: "images/a.jpg".into(),
            epsilon: 2.0,
            labels: vec![Label { class: 3, cx: 0.5, cy: 0.25, w: 0.1, h: 0.2 }],
            image_size: (640, 480),
            features: vec![1, 2, 3],
        };
        let spend = Record { kind: RecordKind::Spend, labels: vec![], features: vec![], image_size: (0, 0), ..sample.clone() };
        for rec in [sample, spend] {
            let frame = rec.to_frame();
            let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
            assert_eq!(len, frame.len() - FRAME_HEADER);
            assert_eq!(Record::from_payload(&frame[FRAME_HEADER..]).unwrap(), rec);
        }
    }

    #[test]
    fn frames_appended_to_one_buffer_are_each_whole() {
        let a = Record { kind: RecordKind::Spend, edge: "e".into(), sample_id: "a".into(), epsilon: 1.0, labels: vec![], image_size: (0, 0), features: vec![] };
        let b = Record { kind: RecordKind::Sample, sample_id: "b".into(), image_size: (2, 3), features: vec![5; 33], ..a.clone() };
        let mut buf = Vec::new();
        a.write_frame(&mut buf);
        b.write_frame(&mut buf);
        assert_eq!(buf, [a.to_frame(), b.to_frame()].concat());
        let second = &buf[a.to_frame().len()..];
        assert_eq!(u32::from_le_bytes(second[4..8].try_into().unwrap()), crc32c::crc32c(&second[FRAME_HEADER..]));
        assert_eq!(Record::from_payload(&second[FRAME_HEADER..]).unwrap(), b);
    }

    #[test]
    fn truncated_payload_names_the_field() {
        let rec = Record {
            kind: RecordKind::Sample,
            edge: "e".into(),
            sample_id: "s".into(),
            epsilon: 1.0,
            labels: vec![],
            image_size: (1, 1),
            features: vec![9; 10],
        };
        let frame = rec.to_frame();
        assert_eq!(Record::from_payload(&frame[FRAME_HEADER..frame.len() - 1]), Err("features"));
    }
}
