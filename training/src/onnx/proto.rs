//! The protobuf wire format, encode side only, for the handful of ONNX messages the exporter
//! writes. Repeated scalars are written unpacked (proto2's default, which every parser accepts).

/// One message being encoded: fields are appended in the order written.
#[derive(Debug, Default, Clone)]
pub struct Message(Vec<u8>);

const VARINT: u32 = 0;
const LEN: u32 = 2;

impl Message {
    pub fn new() -> Self {
        Self::default()
    }

    fn varint(&mut self, mut v: u64) {
        while v >= 0x80 {
            self.0.push((v as u8 & 0x7f) | 0x80);
            v >>= 7;
        }
        self.0.push(v as u8);
    }

    fn key(&mut self, field: u32, wire: u32) {
        self.varint(u64::from(field << 3 | wire));
    }

    /// An `int64` / `int32` field (negative values as their 10-byte two's complement, per spec).
    pub fn int(&mut self, field: u32, v: i64) -> &mut Self {
        self.key(field, VARINT);
        self.varint(v as u64);
        self
    }

    pub fn ints(&mut self, field: u32, vs: &[i64]) -> &mut Self {
        for &v in vs {
            self.int(field, v);
        }
        self
    }

    pub fn bytes(&mut self, field: u32, v: &[u8]) -> &mut Self {
        self.key(field, LEN);
        self.varint(v.len() as u64);
        self.0.extend_from_slice(v);
        self
    }

    pub fn string(&mut self, field: u32, v: &str) -> &mut Self {
        self.bytes(field, v.as_bytes())
    }

    pub fn message(&mut self, field: u32, m: &Message) -> &mut Self {
        self.bytes(field, &m.0)
    }

    #[cfg(test)]
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::Message;

    #[test]
    fn encodings_match_the_protobuf_spec_examples() {
        // https://protobuf.dev/programming-guides/encoding/: field 1 = 150 is 08 96 01.
        assert_eq!(Message::new().int(1, 150).as_bytes(), [0x08, 0x96, 0x01]);
        // field 2 = "testing" is 12 07 74 65 73 74 69 6e 67.
        assert_eq!(Message::new().string(2, "testing").as_bytes(), b"\x12\x07testing");
        // Negative int64 is ten bytes, ending in 0x01.
        let mut neg = Message::new();
        let neg = neg.int(3, -1).as_bytes();
        assert_eq!(neg.len(), 11);
        assert_eq!(neg[0], 0x18);
        assert_eq!(neg[10], 0x01);
        let mut inner = Message::new();
        inner.int(1, 1);
        assert_eq!(Message::new().message(16, &inner).as_bytes(), [0x82, 0x01, 0x02, 0x08, 0x01]);
    }
}
