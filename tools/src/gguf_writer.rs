//! Streaming GGUF writer: the inverse of [`tern_engine::gguf`].
//!
//! 1. [`GgufWriter::new`] takes the metadata and the table of tensors
//!    ([`TensorDesc`]: name, shape, type, byte size), lays the tensors out at
//!    aligned offsets, and writes the header, the metadata, the table and the
//!    padding up to the data section straight away.
//! 2. [`GgufWriter::write_tensor`] (or [`GgufWriter::write_tensor_part`], for
//!    a tensor produced in pieces) then appends tensor data in table order,
//!    padding between tensors as it goes.
//! 3. [`GgufWriter::finish`] checks that every declared byte arrived.
//!
//! Nothing but the metadata is held in memory, and the output only needs
//! [`Write`], so a multi-gigabyte file can be produced tensor by tensor into
//! a `BufWriter<File>`, a pipe or a `Vec<u8>`.
//!
//! ```no_run
//! use std::io::BufWriter;
//! use tern_engine::gguf::{GgmlType, Value};
//! use tern_tools::gguf_writer::{GgufWriter, TensorDesc};
//!
//! let out = BufWriter::new(std::fs::File::create("tiny.gguf")?);
//! let metadata = [("general.architecture", Value::String("bitnet".into()))];
//! let norm = TensorDesc::new("output_norm.weight", &[4], GgmlType::F32)?;
//! let mut w = GgufWriter::new(out, &metadata, vec![norm])?;
//! w.write_tensor(&[1.0f32; 4].map(f32::to_le_bytes).concat())?;
//! w.finish()?;
//! # Ok::<(), std::io::Error>(())
//! ```

use std::io::{self, Write};

use tern_engine::gguf::{GgmlType, Value};

/// The GGUF version [`GgufWriter::new`] writes.
pub const VERSION: u32 = 3;
/// Alignment of the data section and of every tensor unless the metadata
/// sets `general.alignment`.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// Zeros written as padding, a slice at a time.
const ZEROS: [u8; 256] = [0; 256];

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

/// One entry of the tensor table: what a reader learns about a tensor before
/// its data.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorDesc {
    pub name: String,
    /// `ne0` (the contiguous dimension) first, as ggml orders them.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Bytes of data that will follow for this tensor.
    pub size: u64,
}

impl TensorDesc {
    /// A tensor whose byte size follows from its shape and type
    /// ([`GgmlType::size_of`]); fails for unknown types and partial blocks.
    pub fn new(name: &str, dims: &[u64], ggml_type: GgmlType) -> io::Result<Self> {
        let n = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
        let size = n.and_then(|n| ggml_type.size_of(n)).ok_or_else(|| {
            invalid(format!("tensor `{name}`: {dims:?} elements of type {ggml_type} have no whole byte size"))
        })?;
        Ok(Self { name: name.to_string(), dims: dims.to_vec(), ggml_type, size })
    }
}

/// Writes one GGUF file to `W` (see the module docs for the order of calls).
pub struct GgufWriter<W: Write> {
    out: W,
    alignment: u64,
    tensors: Vec<TensorDesc>,
    /// Offset of each tensor relative to the data section.
    offsets: Vec<u64>,
    /// Bytes of the header, metadata, table and padding: where data starts.
    data_start: u64,
    /// Bytes written so far, header included.
    written: u64,
    /// Index of the tensor being written (== tensors.len() when all are done).
    current: usize,
    /// Bytes of the current tensor written so far.
    filled: u64,
}

impl<W: Write> GgufWriter<W> {
    /// Writes a version-3 header, the metadata and the tensor table.
    pub fn new<K: AsRef<str>>(out: W, metadata: &[(K, Value)], tensors: Vec<TensorDesc>) -> io::Result<Self> {
        Self::with_version(out, VERSION, metadata, tensors)
    }

    /// As [`GgufWriter::new`] with another version number in the header
    /// (the layout written is always version 3's, which version 2 shares).
    pub fn with_version<K: AsRef<str>>(
        out: W,
        version: u32,
        metadata: &[(K, Value)],
        tensors: Vec<TensorDesc>,
    ) -> io::Result<Self> {
        let alignment = match metadata.iter().find(|(k, _)| k.as_ref() == "general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some((_, v)) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(invalid(format!("general.alignment must be a power of two, got {v:?}"))),
            },
        };
        let mut offsets = Vec::with_capacity(tensors.len());
        let mut next = 0u64;
        for t in &tensors {
            offsets.push(next);
            next = next
                .checked_add(t.size)
                .map(|end| end.next_multiple_of(alignment))
                .ok_or_else(|| invalid(format!("tensor `{}`: the data section overflows", t.name)))?;
        }
        let mut w = Self {
            out,
            alignment,
            tensors: Vec::new(),
            offsets: Vec::new(),
            data_start: 0,
            written: 0,
            current: 0,
            filled: 0,
        };

        w.put(b"GGUF")?;
        w.put(&version.to_le_bytes())?;
        w.put(&(tensors.len() as u64).to_le_bytes())?;
        w.put(&(metadata.len() as u64).to_le_bytes())?;
        for (key, value) in metadata {
            w.put_str(key.as_ref())?;
            w.put(&value_type(value).to_le_bytes())?;
            w.put_value(value, key.as_ref())?;
        }
        for (t, offset) in tensors.iter().zip(&offsets) {
            w.put_str(&t.name)?;
            w.put(&(t.dims.len() as u32).to_le_bytes())?;
            for d in &t.dims {
                w.put(&d.to_le_bytes())?;
            }
            w.put(&t.ggml_type.id().to_le_bytes())?;
            w.put(&offset.to_le_bytes())?;
        }
        w.tensors = tensors;
        w.offsets = offsets;
        w.data_start = w.written.next_multiple_of(alignment);
        w.pad_to(w.data_start)?;
        Ok(w)
    }

    /// The alignment in force (`general.alignment`, or 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Size of the finished file: the last tensor's end (no padding after it).
    pub fn file_size(&self) -> u64 {
        match (self.tensors.last(), self.offsets.last()) {
            (Some(t), Some(&off)) => self.data_start + off + t.size,
            _ => self.data_start,
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// Index of the next tensor to write (its position in the table).
    pub fn next_tensor(&self) -> usize {
        self.current
    }

    /// The table as given to [`GgufWriter::new`].
    pub fn tensors(&self) -> &[TensorDesc] {
        &self.tensors
    }

    /// The whole data of the next tensor in the table.
    pub fn write_tensor(&mut self, data: &[u8]) -> io::Result<()> {
        let t = self.expect_tensor()?;
        if self.filled != 0 || data.len() as u64 != t.size {
            return Err(invalid(format!(
                "tensor `{}` takes {} bytes, got {} (after {} already written)",
                t.name,
                t.size,
                data.len(),
                self.filled
            )));
        }
        self.write_tensor_part(data)
    }

    /// The next piece of the current tensor's data. The tensor is complete,
    /// and the following one becomes current, once its size is reached; a
    /// zero-sized tensor is completed by an empty piece.
    pub fn write_tensor_part(&mut self, data: &[u8]) -> io::Result<()> {
        let t = self.expect_tensor()?;
        if self.filled + data.len() as u64 > t.size {
            return Err(invalid(format!(
                "tensor `{}` takes {} bytes, got {} more after {}",
                t.name,
                t.size,
                data.len(),
                self.filled
            )));
        }
        if self.filled == 0 {
            self.pad_to(self.data_start + self.offsets[self.current])?;
        }
        self.put(data)?;
        self.filled += data.len() as u64;
        if self.filled == self.tensors[self.current].size {
            self.current += 1;
            self.filled = 0;
        }
        Ok(())
    }

    /// Checks that every tensor was written, flushes, and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        if let Some(t) = self.tensors.get(self.current) {
            return Err(invalid(format!(
                "tensor `{}` ({} of {}) is missing {} bytes",
                t.name,
                self.current + 1,
                self.tensors.len(),
                t.size - self.filled
            )));
        }
        self.out.flush()?;
        Ok(self.out)
    }

    fn expect_tensor(&self) -> io::Result<&TensorDesc> {
        self.tensors
            .get(self.current)
            .ok_or_else(|| invalid(format!("all {} tensors are already written", self.tensors.len())))
    }

    fn put(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn put_str(&mut self, s: &str) -> io::Result<()> {
        self.put(&(s.len() as u64).to_le_bytes())?;
        self.put(s.as_bytes())
    }

    fn pad_to(&mut self, offset: u64) -> io::Result<()> {
        while self.written < offset {
            let n = (offset - self.written).min(ZEROS.len() as u64) as usize;
            self.put(&ZEROS[..n])?;
        }
        Ok(())
    }

    fn put_value(&mut self, v: &Value, key: &str) -> io::Result<()> {
        match v {
            Value::U8(x) => self.put(&[*x]),
            Value::I8(x) => self.put(&x.to_le_bytes()),
            Value::U16(x) => self.put(&x.to_le_bytes()),
            Value::I16(x) => self.put(&x.to_le_bytes()),
            Value::U32(x) => self.put(&x.to_le_bytes()),
            Value::I32(x) => self.put(&x.to_le_bytes()),
            Value::F32(x) => self.put(&x.to_le_bytes()),
            Value::U64(x) => self.put(&x.to_le_bytes()),
            Value::I64(x) => self.put(&x.to_le_bytes()),
            Value::F64(x) => self.put(&x.to_le_bytes()),
            Value::Bool(x) => self.put(&[u8::from(*x)]),
            Value::String(s) => self.put_str(s),
            Value::Array(items) => {
                // GGUF arrays hold one element type; an empty one is typed u32.
                let elem = items.first().map_or(4, value_type);
                if let Some(odd) = items.iter().find(|item| value_type(item) != elem) {
                    return Err(invalid(format!(
                        "metadata `{key}`: an array of {} cannot hold a {}",
                        items[0].type_name(),
                        odd.type_name()
                    )));
                }
                self.put(&elem.to_le_bytes())?;
                self.put(&(items.len() as u64).to_le_bytes())?;
                items.iter().try_for_each(|item| self.put_value(item, key))
            }
        }
    }
}

/// The GGUF id of a value's type.
fn value_type(v: &Value) -> u32 {
    match v {
        Value::U8(_) => 0,
        Value::I8(_) => 1,
        Value::U16(_) => 2,
        Value::I16(_) => 3,
        Value::U32(_) => 4,
        Value::I32(_) => 5,
        Value::F32(_) => 6,
        Value::Bool(_) => 7,
        Value::String(_) => 8,
        Value::Array(_) => 9,
        Value::U64(_) => 10,
        Value::I64(_) => 11,
        Value::F64(_) => 12,
    }
}

/// A whole GGUF image in memory: metadata, then each tensor's `(desc, data)`.
/// Handy for small files and tests; large files should stream.
pub fn to_vec<K: AsRef<str>>(metadata: &[(K, Value)], tensors: &[(TensorDesc, &[u8])]) -> io::Result<Vec<u8>> {
    let descs = tensors.iter().map(|(d, _)| d.clone()).collect();
    let mut w = GgufWriter::new(Vec::new(), metadata, descs)?;
    for (_, data) in tensors {
        w.write_tensor(data)?;
    }
    w.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_engine::gguf::GgufFile;

    fn f32_bytes(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    #[test]
    fn writer_streams_a_tensor_in_pieces_with_padding_between_tensors() {
        let a = TensorDesc::new("a", &[3], GgmlType::F32).unwrap();
        let b = TensorDesc::new("b", &[2, 2], GgmlType::F16).unwrap();
        let mut w = GgufWriter::new(Vec::new(), &[("k", Value::U32(7))], vec![a, b]).unwrap();
        let size = w.file_size();
        w.write_tensor_part(&f32_bytes(&[1.0])).unwrap();
        w.write_tensor_part(&f32_bytes(&[2.0, 3.0])).unwrap();
        assert_eq!(w.next_tensor(), 1);
        w.write_tensor(&[9; 8]).unwrap();
        let bytes = w.finish().unwrap();
        assert_eq!(bytes.len() as u64, size);

        let g = GgufFile::from_bytes(bytes).unwrap();
        assert_eq!(g.u32("k").unwrap(), 7);
        assert_eq!(g.tensor_data("a").unwrap(), &f32_bytes(&[1.0, 2.0, 3.0])[..]);
        assert_eq!(g.tensor_data("b").unwrap(), &[9; 8][..]);
        assert_eq!(g.tensor("b").unwrap().offset, g.tensor("a").unwrap().offset + 32);
    }

    #[test]
    fn writer_refuses_wrong_amounts_of_data() {
        let t = || vec![TensorDesc::new("t", &[4], GgmlType::F32).unwrap()];
        let no_kv: &[(&str, Value)] = &[];
        let mut w = GgufWriter::new(Vec::new(), no_kv, t()).unwrap();
        assert!(w.write_tensor(&[0; 12]).is_err());
        assert!(w.write_tensor_part(&[0; 20]).is_err());
        w.write_tensor_part(&[0; 8]).unwrap();
        assert!(w.write_tensor(&[0; 8]).is_err(), "a whole tensor cannot follow a part");
        let err = GgufWriter::new(Vec::new(), no_kv, t()).unwrap().finish().unwrap_err();
        assert!(err.to_string().contains("`t`"), "{err}");
        let mut done = GgufWriter::new(Vec::new(), no_kv, t()).unwrap();
        done.write_tensor(&[0; 16]).unwrap();
        assert!(done.write_tensor_part(&[0]).is_err());
    }

    #[test]
    fn writer_refuses_mixed_arrays_and_bad_alignment() {
        let mixed = [("a", Value::Array(vec![Value::U32(1), Value::String("x".into())]))];
        assert!(GgufWriter::new(Vec::new(), &mixed, vec![]).is_err());
        let odd = [("general.alignment", Value::U32(48))];
        assert!(GgufWriter::new(Vec::new(), &odd, vec![]).is_err());
        assert!(TensorDesc::new("t", &[100], GgmlType::TQ2_0).is_err());
        assert!(TensorDesc::new("t", &[256], GgmlType::Other(38)).is_err());
    }
}
