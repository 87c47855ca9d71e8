//! GGUF reader (versions 2 and 3) over a memory map.
//!
//! A GGUF file is a header (magic, version, counts), typed key/value metadata,
//! a table of tensor descriptions, then the tensor data section, which starts
//! at the next multiple of `general.alignment` (default 32) after the table.
//! Tensor offsets are relative to that section.
//!
//! Every length read from the file is checked against the bytes that remain
//! before anything is allocated from it, so a corrupt or hostile file costs an
//! error, never a huge allocation or an out-of-bounds slice.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::path::{Path, PathBuf};

use memmap2::Mmap;

const MAGIC: [u8; 4] = *b"GGUF";
const DEFAULT_ALIGNMENT: u64 = 32;
/// ggml tensors have at most four dimensions.
const MAX_DIMS: u32 = 4;
/// Arrays of arrays are legal but nobody nests deeply; bound the recursion.
const MAX_ARRAY_DEPTH: usize = 8;

/// Why a GGUF file could not be read or a value could not be found.
#[derive(Debug, thiserror::Error)]
pub enum GgufError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not a GGUF file (magic bytes {0:02x?}, expected \"GGUF\")")]
    BadMagic([u8; 4]),
    #[error("unsupported GGUF version {0} (supported: 2 and 3)")]
    UnsupportedVersion(u32),
    #[error("GGUF header ends early: the file stops while reading {0}")]
    UnexpectedEof(String),
    #[error("invalid GGUF: {0}")]
    Invalid(String),
    #[error("tensor `{tensor}` needs {size} bytes at offset {offset}, past the end of the file ({file_size} bytes)")]
    Truncated { tensor: String, offset: u64, size: u64, file_size: u64 },
    #[error("missing metadata key `{0}`")]
    MissingKey(String),
    #[error("metadata key `{key}` holds {found}, expected {expected}")]
    WrongType { key: String, expected: &'static str, found: &'static str },
    #[error("no tensor named `{0}`")]
    MissingTensor(String),
    #[error("tensor `{tensor}` has type {ggml_type}, whose data size is unknown")]
    UnknownTypeSize { tensor: String, ggml_type: String },
}

/// Element type of a tensor (`ggml_type` ids), named as ggml names them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    F32,
    F16,
    BF16,
    Q8_0,
    TQ1_0,
    TQ2_0,
    /// bitnet.cpp's fork type 36: 2-bit codes plus one f32 scale per tensor.
    I2_S,
    Other(u32),
}

impl GgmlType {
    pub fn from_id(id: u32) -> Self {
        match id {
            0 => Self::F32,
            1 => Self::F16,
            8 => Self::Q8_0,
            30 => Self::BF16,
            34 => Self::TQ1_0,
            35 => Self::TQ2_0,
            36 => Self::I2_S,
            other => Self::Other(other),
        }
    }

    pub fn id(&self) -> u32 {
        match self {
            Self::F32 => 0,
            Self::F16 => 1,
            Self::Q8_0 => 8,
            Self::BF16 => 30,
            Self::TQ1_0 => 34,
            Self::TQ2_0 => 35,
            Self::I2_S => 36,
            Self::Other(id) => *id,
        }
    }

    pub fn name(&self) -> String {
        let name = match self {
            Self::F32 => "F32",
            Self::F16 => "F16",
            Self::BF16 => "BF16",
            Self::Q8_0 => "Q8_0",
            Self::TQ1_0 => "TQ1_0",
            Self::TQ2_0 => "TQ2_0",
            Self::I2_S => "I2_S",
            Self::Other(id) => match mainline_layout(*id) {
                Some((name, _, _)) => name,
                None => return format!("type {id}"),
            },
        };
        name.to_string()
    }

    /// Elements per block and bytes per block, where the type is known.
    /// I2_S has no fixed block size on disk (see [`GgmlType::size_of`]).
    pub fn block_layout(&self) -> Option<(u64, u64)> {
        match self {
            Self::F32 => Some((1, 4)),
            Self::F16 | Self::BF16 => Some((1, 2)),
            Self::Q8_0 => Some((32, 34)),
            Self::TQ1_0 => Some((256, 54)),
            Self::TQ2_0 => Some((256, 66)),
            Self::I2_S => None,
            Self::Other(id) => mainline_layout(*id).map(|(_, elems, bytes)| (elems, bytes)),
        }
    }

    /// Bytes that `n_elements` of this type occupy on disk, or `None` when the
    /// type is unknown or `n_elements` is not a whole number of blocks.
    ///
    /// I2_S is special-cased: the fork declares block size 1 and type size 1,
    /// but stores `n/4` bytes of 2-bit codes followed by a 32-byte trailer
    /// (one f32 scale and padding).
    pub fn size_of(&self, n_elements: u64) -> Option<u64> {
        if *self == Self::I2_S {
            return Some(n_elements / 4 + 32);
        }
        let (block_elems, block_bytes) = self.block_layout()?;
        if !n_elements.is_multiple_of(block_elems) {
            return None;
        }
        (n_elements / block_elems).checked_mul(block_bytes)
    }
}

impl fmt::Display for GgmlType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

/// Name, elements per block and bytes per block of the mainline llama.cpp
/// types without a variant of their own. Ids 37-39 are left out on purpose:
/// bitnet.cpp's fork reuses them for its lookup-table formats.
fn mainline_layout(id: u32) -> Option<(&'static str, u64, u64)> {
    Some(match id {
        2 => ("Q4_0", 32, 18),
        3 => ("Q4_1", 32, 20),
        6 => ("Q5_0", 32, 22),
        7 => ("Q5_1", 32, 24),
        9 => ("Q8_1", 32, 36),
        10 => ("Q2_K", 256, 84),
        11 => ("Q3_K", 256, 110),
        12 => ("Q4_K", 256, 144),
        13 => ("Q5_K", 256, 176),
        14 => ("Q6_K", 256, 210),
        15 => ("Q8_K", 256, 292),
        24 => ("I8", 1, 1),
        25 => ("I16", 1, 2),
        26 => ("I32", 1, 4),
        27 => ("I64", 1, 8),
        28 => ("F64", 1, 8),
        _ => return None,
    })
}

/// A metadata value.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    U8(u8),
    I8(i8),
    U16(u16),
    I16(i16),
    U32(u32),
    I32(i32),
    F32(f32),
    U64(u64),
    I64(i64),
    F64(f64),
    Bool(bool),
    String(String),
    Array(Vec<Value>),
}

impl Value {
    /// Any integer type holding a non-negative value.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            Self::I8(v) => u64::try_from(v).ok(),
            Self::I16(v) => u64::try_from(v).ok(),
            Self::I32(v) => u64::try_from(v).ok(),
            Self::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// Any integer type.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => i64::try_from(v).ok(),
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            _ => None,
        }
    }

    /// Any numeric type, converted.
    pub fn as_f32(&self) -> Option<f32> {
        match *self {
            Self::F32(v) => Some(v),
            Self::F64(v) => Some(v as f32),
            _ => self.as_i64().map(|v| v as f32),
        }
    }

    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    pub fn as_array(&self) -> Option<&[Value]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }

    /// The GGUF name of this value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Self::U8(_) => "u8",
            Self::I8(_) => "i8",
            Self::U16(_) => "u16",
            Self::I16(_) => "i16",
            Self::U32(_) => "u32",
            Self::I32(_) => "i32",
            Self::F32(_) => "f32",
            Self::U64(_) => "u64",
            Self::I64(_) => "i64",
            Self::F64(_) => "f64",
            Self::Bool(_) => "bool",
            Self::String(_) => "string",
            Self::Array(_) => "array",
        }
    }
}

/// Where one tensor lives in the file.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    pub name: String,
    /// `ne0` (the contiguous dimension) first, as ggml orders them.
    pub dims: Vec<u64>,
    pub ggml_type: GgmlType,
    /// Absolute offset of the first byte in the file.
    pub offset: u64,
    /// Bytes of data; 0 when the type's size is unknown
    /// (then [`GgufFile::tensor_data`] reports an error).
    pub size: u64,
}

impl TensorInfo {
    pub fn n_elements(&self) -> u64 {
        // Checked at load time not to overflow.
        self.dims.iter().product()
    }
}

enum Bytes {
    Mapped(Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Self::Mapped(m) => m,
            Self::Owned(v) => v,
        }
    }
}

/// A parsed GGUF file. Tensor data stays in the memory map until asked for.
pub struct GgufFile {
    pub version: u32,
    pub metadata: BTreeMap<String, Value>,
    pub tensors: BTreeMap<String, TensorInfo>,
    /// `general.alignment`, or 32.
    pub alignment: u64,
    /// Absolute offset of the tensor data section.
    pub data_offset: u64,
    bytes: Bytes,
    path: Option<PathBuf>,
}

impl fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata_keys", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .field("file_size", &self.file_size())
            .finish()
    }
}

impl GgufFile {
    /// Map `path` and parse its header. The data is not read here.
    pub fn open(path: &Path) -> Result<Self, GgufError> {
        let io = |source| GgufError::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        // SAFETY: the map is read-only. Another process truncating or rewriting
        // the file while it is mapped is outside what this server supports,
        // as for every mmap-based model loader.
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let mut gguf = Self::parse(Bytes::Mapped(map))?;
        gguf.path = Some(path.to_path_buf());
        Ok(gguf)
    }

    /// Parse a GGUF image held in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Self, GgufError> {
        Self::parse(Bytes::Owned(bytes))
    }

    /// A file with metadata only and no tensors, as if read from disk.
    pub fn from_metadata(metadata: BTreeMap<String, Value>) -> Self {
        Self {
            version: 3,
            metadata,
            tensors: BTreeMap::new(),
            alignment: DEFAULT_ALIGNMENT,
            data_offset: 0,
            bytes: Bytes::Owned(Vec::new()),
            path: None,
        }
    }

    /// Adds a tensor to a file built in memory ([`GgufFile::from_metadata`]):
    /// `dims` with `ne0` first, `data` in `ggml_type`'s layout.
    pub fn add_tensor(
        &mut self,
        name: &str,
        ggml_type: GgmlType,
        dims: Vec<u64>,
        data: &[u8],
    ) -> Result<(), GgufError> {
        let Bytes::Owned(bytes) = &mut self.bytes else {
            return Err(GgufError::Invalid("tensors are only added to a file built in memory".into()));
        };
        let n: u64 = dims.iter().product();
        if ggml_type.size_of(n) != Some(data.len() as u64) {
            return Err(GgufError::Invalid(format!(
                "tensor `{name}`: {} bytes do not hold {n} {}",
                data.len(),
                ggml_type.name()
            )));
        }
        let offset = (bytes.len() as u64).next_multiple_of(self.alignment);
        bytes.resize(offset as usize, 0);
        bytes.extend_from_slice(data);
        let info = TensorInfo { name: name.to_string(), dims, ggml_type, offset, size: data.len() as u64 };
        if self.tensors.insert(name.to_string(), info).is_some() {
            return Err(GgufError::Invalid(format!("duplicate tensor `{name}`")));
        }
        Ok(())
    }

    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    pub fn file_size(&self) -> u64 {
        self.bytes.as_slice().len() as u64
    }

    pub fn get(&self, key: &str) -> Option<&Value> {
        self.metadata.get(key)
    }

    fn require(&self, key: &str) -> Result<&Value, GgufError> {
        self.get(key).ok_or_else(|| GgufError::MissingKey(key.to_string()))
    }

    fn wrong_type(key: &str, expected: &'static str, found: &Value) -> GgufError {
        GgufError::WrongType { key: key.to_string(), expected, found: found.type_name() }
    }

    /// An integer key that fits in u32, whatever integer type it was stored as.
    pub fn u32(&self, key: &str) -> Result<u32, GgufError> {
        let v = self.require(key)?;
        v.as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| Self::wrong_type(key, "an integer in u32 range", v))
    }

    /// A non-negative integer key, whatever integer type it was stored as.
    pub fn u64(&self, key: &str) -> Result<u64, GgufError> {
        let v = self.require(key)?;
        v.as_u64().ok_or_else(|| Self::wrong_type(key, "a non-negative integer", v))
    }

    /// A numeric key as f32.
    pub fn f32(&self, key: &str) -> Result<f32, GgufError> {
        let v = self.require(key)?;
        v.as_f32().ok_or_else(|| Self::wrong_type(key, "a number", v))
    }

    pub fn str(&self, key: &str) -> Result<&str, GgufError> {
        let v = self.require(key)?;
        v.as_str().ok_or_else(|| Self::wrong_type(key, "a string", v))
    }

    pub fn bool(&self, key: &str) -> Result<bool, GgufError> {
        let v = self.require(key)?;
        v.as_bool().ok_or_else(|| Self::wrong_type(key, "a bool", v))
    }

    pub fn array(&self, key: &str) -> Result<&[Value], GgufError> {
        let v = self.require(key)?;
        v.as_array().ok_or_else(|| Self::wrong_type(key, "an array", v))
    }

    pub fn tensor(&self, name: &str) -> Result<&TensorInfo, GgufError> {
        self.tensors.get(name).ok_or_else(|| GgufError::MissingTensor(name.to_string()))
    }

    /// The bytes of one tensor, straight from the map.
    pub fn tensor_data(&self, name: &str) -> Result<&[u8], GgufError> {
        let t = self.tensor(name)?;
        if t.ggml_type.size_of(t.n_elements()).is_none() {
            return Err(GgufError::UnknownTypeSize { tensor: t.name.clone(), ggml_type: t.ggml_type.name() });
        }
        // Bounds were checked at load time.
        Ok(&self.bytes.as_slice()[t.offset as usize..(t.offset + t.size) as usize])
    }

    fn parse(bytes: Bytes) -> Result<Self, GgufError> {
        let data = bytes.as_slice();
        let file_size = data.len() as u64;
        let mut r = Reader { data, pos: 0 };

        let magic: [u8; 4] = r.take(4, "the magic number")?.try_into().expect("4 bytes");
        if magic != MAGIC {
            return Err(GgufError::BadMagic(magic));
        }
        let version = r.u32("the version")?;
        // Version 1 used 32-bit counts and lengths; nothing current writes it.
        if version != 2 && version != 3 {
            return Err(GgufError::UnsupportedVersion(version));
        }
        let n_tensors = r.u64("the tensor count")?;
        let n_kv = r.u64("the metadata count")?;
        // Smallest possible entries: a key/value is an empty key (8), a type (4)
        // and a one-byte value; a tensor info is an empty name (8), n_dims (4),
        // a type (4) and an offset (8).
        r.check_count(n_kv, 13, "metadata entries")?;
        r.check_count(n_tensors, 24, "tensor infos")?;

        let mut metadata = BTreeMap::new();
        for i in 0..n_kv {
            let key = r.string(&format!("the key of metadata entry {i}"))?;
            let what = format!("metadata `{key}`");
            let ty = r.u32(&what)?;
            let value = r.value(ty, &what, 0)?;
            if metadata.insert(key.clone(), value).is_some() {
                return Err(GgufError::Invalid(format!("duplicate metadata key `{key}`")));
            }
        }

        let alignment = match metadata.get("general.alignment") {
            None => DEFAULT_ALIGNMENT,
            Some(v) => match v.as_u64() {
                Some(a) if a.is_power_of_two() => a,
                _ => return Err(GgufError::Invalid(format!("general.alignment must be a power of two, found {v:?}"))),
            },
        };

        let mut infos = Vec::with_capacity(n_tensors as usize);
        for i in 0..n_tensors {
            let name = r.string(&format!("the name of tensor {i}"))?;
            let what = format!("tensor `{name}`");
            let n_dims = r.u32(&what)?;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(GgufError::Invalid(format!(
                    "tensor `{name}` has {n_dims} dimensions (1 to {MAX_DIMS} allowed)"
                )));
            }
            let mut dims = Vec::with_capacity(n_dims as usize);
            for _ in 0..n_dims {
                dims.push(r.u64(&what)?);
            }
            let ggml_type = GgmlType::from_id(r.u32(&what)?);
            let rel_offset = r.u64(&what)?;
            infos.push((name, dims, ggml_type, rel_offset));
        }

        let data_offset = align_up(r.pos as u64, alignment)
            .ok_or_else(|| GgufError::Invalid("data section offset overflows".to_string()))?;

        let mut tensors = BTreeMap::new();
        for (name, dims, ggml_type, rel_offset) in infos {
            let n_elements = dims.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d));
            let Some(n_elements) = n_elements else {
                return Err(GgufError::Invalid(format!(
                    "tensor `{name}` has dimensions {dims:?} whose product overflows"
                )));
            };
            if !rel_offset.is_multiple_of(alignment) {
                return Err(GgufError::Invalid(format!(
                    "tensor `{name}` offset {rel_offset} is not a multiple of the alignment {alignment}"
                )));
            }
            let offset = data_offset.checked_add(rel_offset);
            let size = match ggml_type.size_of(n_elements) {
                Some(size) => size,
                None if ggml_type.block_layout().is_some() => {
                    let (block, _) = ggml_type.block_layout().expect("checked");
                    return Err(GgufError::Invalid(format!(
                        "tensor `{name}` of type {ggml_type} has {n_elements} elements, \
                         not a multiple of its block size {block}"
                    )));
                }
                // Unknown type: nothing to check until someone asks for the data.
                None => 0,
            };
            let end = offset.and_then(|o| o.checked_add(size));
            match (offset, end) {
                (Some(offset), Some(end)) if end <= file_size => {
                    let info = TensorInfo { name: name.clone(), dims, ggml_type, offset, size };
                    if tensors.insert(name.clone(), info).is_some() {
                        return Err(GgufError::Invalid(format!("duplicate tensor `{name}`")));
                    }
                }
                _ => {
                    return Err(GgufError::Truncated {
                        tensor: name,
                        offset: offset.unwrap_or(u64::MAX),
                        size,
                        file_size,
                    })
                }
            }
        }

        Ok(Self { version, metadata, tensors, alignment, data_offset, bytes, path: None })
    }
}

fn align_up(x: u64, alignment: u64) -> Option<u64> {
    Some(x.checked_add(alignment - 1)? & !(alignment - 1))
}

/// Little-endian cursor that never reads or allocates past the end of `data`.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> u64 {
        (self.data.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8], GgufError> {
        if n > self.remaining() {
            return Err(GgufError::UnexpectedEof(what.to_string()));
        }
        let n = n as usize;
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    /// Reject a count of items that could not fit in the rest of the file,
    /// before anything is allocated for them.
    fn check_count(&self, count: u64, min_item_size: u64, what: &str) -> Result<(), GgufError> {
        match count.checked_mul(min_item_size) {
            Some(bytes) if bytes <= self.remaining() => Ok(()),
            _ => Err(GgufError::Invalid(format!(
                "{count} {what} cannot fit in the {} bytes left in the file",
                self.remaining()
            ))),
        }
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        Ok(self.take(N as u64, what)?.try_into().expect("N bytes"))
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| GgufError::Invalid(format!("{what}: string is not valid UTF-8")))
    }

    fn value(&mut self, ty: u32, what: &str, depth: usize) -> Result<Value, GgufError> {
        Ok(match ty {
            0 => Value::U8(u8::from_le_bytes(self.array(what)?)),
            1 => Value::I8(i8::from_le_bytes(self.array(what)?)),
            2 => Value::U16(u16::from_le_bytes(self.array(what)?)),
            3 => Value::I16(i16::from_le_bytes(self.array(what)?)),
            4 => Value::U32(u32::from_le_bytes(self.array(what)?)),
            5 => Value::I32(i32::from_le_bytes(self.array(what)?)),
            6 => Value::F32(f32::from_le_bytes(self.array(what)?)),
            7 => match self.array::<1>(what)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(GgufError::Invalid(format!("{what}: bool byte {b}"))),
            },
            8 => Value::String(self.string(what)?),
            9 => {
                if depth >= MAX_ARRAY_DEPTH {
                    return Err(GgufError::Invalid(format!("{what}: arrays nested too deeply")));
                }
                let elem_ty = self.u32(what)?;
                let count = self.u64(what)?;
                let min_size = match elem_ty {
                    0 | 1 | 7 => 1,
                    2 | 3 => 2,
                    4..=6 => 4,
                    8 => 8,
                    9 => 12,
                    10..=12 => 8,
                    other => return Err(GgufError::Invalid(format!("{what}: unknown value type {other}"))),
                };
                self.check_count(count, min_size, &format!("array elements in {what}"))?;
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem_ty, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(u64::from_le_bytes(self.array(what)?)),
            11 => Value::I64(i64::from_le_bytes(self.array(what)?)),
            12 => Value::F64(f64::from_le_bytes(self.array(what)?)),
            other => return Err(GgufError::Invalid(format!("{what}: unknown value type {other}"))),
        })
    }
}
