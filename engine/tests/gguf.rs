//! The GGUF reader against files the project's writer produces: metadata
//! and tensors read back, and every malformed file refused with an error
//! that names what is wrong.

use tern_engine::gguf::{GgmlType, GgufError, GgufFile, Value};
use tern_tools::gguf_writer::{GgufWriter, TensorDesc};

/// A tensor with its data. The declared size is the data's length, so a
/// test can describe a tensor whose shape and size disagree.
fn tensor(name: &str, dims: &[u64], type_id: u32, data: Vec<u8>) -> (TensorDesc, Vec<u8>) {
    let ggml_type = GgmlType::from_id(type_id);
    (TensorDesc { name: name.to_string(), dims: dims.to_vec(), ggml_type, size: data.len() as u64 }, data)
}

fn write(version: u32, kv: &[(&str, Value)], tensors: &[(TensorDesc, Vec<u8>)]) -> Vec<u8> {
    let descs = tensors.iter().map(|(d, _)| d.clone()).collect();
    let mut w = GgufWriter::with_version(Vec::new(), version, kv, descs).unwrap();
    for (_, data) in tensors {
        w.write_tensor(data).unwrap();
    }
    w.finish().unwrap()
}

fn f32_bytes(values: &[f32]) -> Vec<u8> {
    values.iter().flat_map(|v| v.to_le_bytes()).collect()
}

#[test]
fn gguf_reads_metadata_and_tensors() {
    let kv = [
        ("general.architecture", Value::String("bitnet-b1.58".into())),
        ("bitnet-b1.58.block_count", Value::U32(30)),
        ("bitnet-b1.58.context_length", Value::U64(4096)),
        ("bitnet-b1.58.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(true)),
        ("signed", Value::I32(-1)),
        ("list", Value::Array(vec![Value::String("a".into()), Value::String("bc".into())])),
    ];
    let norm = f32_bytes(&[1.0, 2.0, 3.0]);
    let bytes =
        write(3, &kv, &[tensor("output_norm.weight", &[3], 0, norm.clone()), tensor("h", &[2, 2], 1, vec![7; 8])]);
    let g = GgufFile::from_bytes(bytes.clone()).unwrap();
    assert_eq!(g.version, 3);
    assert_eq!(g.str("general.architecture").unwrap(), "bitnet-b1.58");
    assert_eq!(g.u32("bitnet-b1.58.block_count").unwrap(), 30);
    assert_eq!(g.u32("bitnet-b1.58.context_length").unwrap(), 4096);
    assert_eq!(g.f32("bitnet-b1.58.attention.layer_norm_rms_epsilon").unwrap(), 1e-5);
    assert_eq!(g.f32("bitnet-b1.58.block_count").unwrap(), 30.0);
    assert!(g.bool("tokenizer.ggml.add_bos_token").unwrap());
    assert_eq!(g.get("signed").unwrap().as_u64(), None);
    assert_eq!(g.array("list").unwrap()[1].as_str(), Some("bc"));
    assert_eq!(g.file_size(), bytes.len() as u64);

    let t = g.tensor("output_norm.weight").unwrap();
    assert_eq!((t.dims.clone(), t.ggml_type, t.size, t.n_elements()), (vec![3], GgmlType::F32, 12, 3));
    assert_eq!(t.offset % 32, 0);
    assert_eq!(g.tensor_data("output_norm.weight").unwrap(), &norm[..]);
    assert_eq!(g.tensor_data("h").unwrap(), &[7u8; 8][..]);
    assert_eq!(g.tensor("h").unwrap().offset, t.offset + 32);
}

#[test]
fn gguf_reads_version_2() {
    let g = GgufFile::from_bytes(write(2, &[("k", Value::U8(1))], &[])).unwrap();
    assert_eq!(g.version, 2);
    assert_eq!(g.u32("k").unwrap(), 1);
}

#[test]
fn gguf_opens_a_file_from_disk() {
    let path = std::env::temp_dir().join(format!("tern-gguf-test-{}.gguf", std::process::id()));
    std::fs::write(&path, write(3, &[], &[tensor("t", &[4], 0, f32_bytes(&[1.0; 4]))])).unwrap();
    let g = GgufFile::open(&path).unwrap();
    assert_eq!(g.tensor_data("t").unwrap(), &f32_bytes(&[1.0; 4])[..]);
    assert_eq!(g.path(), Some(path.as_path()));
    drop(g);
    std::fs::remove_file(&path).unwrap();
    assert!(matches!(GgufFile::open(&path), Err(GgufError::Io { .. })));
}

#[test]
fn gguf_rejects_bad_magic() {
    let mut bytes = write(3, &[], &[]);
    bytes[0..4].copy_from_slice(b"GGML");
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::BadMagic(m)) if &m == b"GGML"));
    assert!(matches!(GgufFile::from_bytes(b"GG".to_vec()), Err(GgufError::UnexpectedEof(_))));
}

#[test]
fn gguf_rejects_unsupported_version() {
    for version in [1, 4, 0x0300_0000] {
        let err = GgufFile::from_bytes(write(version, &[], &[])).unwrap_err();
        assert!(matches!(err, GgufError::UnsupportedVersion(v) if v == version), "{err}");
    }
}

#[test]
fn gguf_rejects_truncated_tensor_data() {
    let mut bytes = write(3, &[], &[tensor("blk.0.attn_q.weight", &[8], 0, f32_bytes(&[0.5; 8]))]);
    bytes.truncate(bytes.len() - 1);
    let err = GgufFile::from_bytes(bytes).unwrap_err();
    assert!(matches!(&err, GgufError::Truncated { tensor, size: 32, .. } if tensor == "blk.0.attn_q.weight"));
    assert!(err.to_string().contains("blk.0.attn_q.weight"), "{err}");
}

#[test]
fn gguf_rejects_tensor_offset_past_end() {
    let mut bytes = write(3, &[], &[tensor("t", &[1], 0, f32_bytes(&[0.0]))]);
    // The offset field is the last 8 bytes of the tensor table, which ends
    // just before the (aligned) data section: patch it to something huge.
    let table_end = 4 + 4 + 8 + 8 + (8 + 1) + 4 + 8 + 4;
    bytes[table_end..table_end + 8].copy_from_slice(&(u64::MAX - 31).to_le_bytes());
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::Truncated { .. })));
}

#[test]
fn gguf_rejects_absurd_counts_and_lengths() {
    // A tensor count that cannot fit in the file.
    let mut bytes = write(3, &[], &[]);
    bytes[8..16].copy_from_slice(&(u64::MAX / 2).to_le_bytes());
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::Invalid(_))));

    // A metadata count that cannot fit in the file.
    let mut bytes = write(3, &[], &[]);
    bytes[16..24].copy_from_slice(&1_000_000u64.to_le_bytes());
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::Invalid(_))));

    // A key length far past the end of the file.
    let mut bytes = write(3, &[("key", Value::U32(1))], &[]);
    bytes[24..32].copy_from_slice(&u64::MAX.to_le_bytes());
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::UnexpectedEof(_))));

    // An array length far past the end of the file.
    let mut bytes = write(3, &[("a", Value::Array(vec![Value::U32(1)]))], &[]);
    let count_at = 24 + 8 + 1 + 4 + 4;
    bytes[count_at..count_at + 8].copy_from_slice(&(u64::MAX / 4).to_le_bytes());
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::Invalid(_))));

    // Dimensions whose product overflows.
    let bytes = write(3, &[], &[tensor("t", &[u64::MAX, 2], 0, vec![])]);
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::Invalid(_))));

    // Too many dimensions.
    let bytes = write(3, &[], &[tensor("t", &[1, 1, 1, 1, 1], 0, vec![0; 4])]);
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::Invalid(_))));
}

#[test]
fn gguf_respects_general_alignment() {
    let kv = [("general.alignment", Value::U32(64))];
    let bytes = write(3, &kv, &[tensor("a", &[1], 0, f32_bytes(&[1.0])), tensor("b", &[1], 0, f32_bytes(&[2.0]))]);
    let g = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(g.alignment, 64);
    assert_eq!(g.data_offset % 64, 0);
    assert_eq!(g.tensor("b").unwrap().offset, g.data_offset + 64);
    assert_eq!(g.tensor_data("b").unwrap(), &f32_bytes(&[2.0])[..]);

    // The writer refuses 48, so patch it over the value, right after the key.
    let mut bad = write(3, &[("general.alignment", Value::U32(64))], &[]);
    let at = 4 + 4 + 8 + 8 + 8 + "general.alignment".len() + 4;
    bad[at..at + 4].copy_from_slice(&48u32.to_le_bytes());
    assert!(matches!(GgufFile::from_bytes(bad), Err(GgufError::Invalid(_))));
}

#[test]
fn gguf_rejects_misaligned_tensor_offset() {
    let mut bytes = write(3, &[], &[tensor("t", &[1], 0, f32_bytes(&[0.0]))]);
    let table_end = 4 + 4 + 8 + 8 + (8 + 1) + 4 + 8 + 4;
    bytes[table_end..table_end + 8].copy_from_slice(&4u64.to_le_bytes());
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::Invalid(_))));
}

#[test]
fn gguf_reads_i2_s_size_specially() {
    assert_eq!(GgmlType::I2_S.size_of(256), Some(256 / 4 + 32));
    assert_eq!(GgmlType::I2_S.size_of(2560 * 2560), Some(2560 * 2560 / 4 + 32));
    let n = 128 * 3;
    let data: Vec<u8> = (0..n / 4 + 32).map(|i| i as u8).collect();
    let bytes = write(3, &[], &[tensor("w", &[128, 3], 36, data.clone())]);
    let g = GgufFile::from_bytes(bytes).unwrap();
    let t = g.tensor("w").unwrap();
    assert_eq!((t.ggml_type, t.size), (GgmlType::I2_S, n as u64 / 4 + 32));
    assert_eq!(g.tensor_data("w").unwrap(), &data[..]);
}

#[test]
fn gguf_sizes_block_types() {
    assert_eq!(GgmlType::TQ2_0.size_of(512), Some(132));
    assert_eq!(GgmlType::TQ1_0.size_of(256), Some(54));
    assert_eq!(GgmlType::Q8_0.size_of(64), Some(68));
    assert_eq!(GgmlType::F16.size_of(3), Some(6));
    assert_eq!(GgmlType::BF16.size_of(3), Some(6));
    assert_eq!(GgmlType::TQ2_0.size_of(100), None);
    assert_eq!(GgmlType::from_id(14).size_of(256), Some(210));
    assert_eq!(GgmlType::from_id(14).name(), "Q6_K");
    assert_eq!(GgmlType::from_id(38).size_of(256), None);
    for id in [0, 1, 8, 30, 34, 35, 36, 38] {
        assert_eq!(GgmlType::from_id(id).id(), id);
    }
    // A block type whose element count is not whole blocks is rejected at load.
    let bytes = write(3, &[], &[tensor("t", &[100], 35, vec![0; 66])]);
    assert!(matches!(GgufFile::from_bytes(bytes), Err(GgufError::Invalid(_))));
}

#[test]
fn gguf_unknown_type_fails_only_when_data_is_asked_for() {
    let bytes = write(3, &[], &[tensor("tl", &[256], 38, vec![0; 64])]);
    let g = GgufFile::from_bytes(bytes).unwrap();
    assert_eq!(g.tensor("tl").unwrap().ggml_type, GgmlType::Other(38));
    assert!(matches!(g.tensor_data("tl"), Err(GgufError::UnknownTypeSize { .. })));
}

#[test]
fn gguf_errors_name_the_key() {
    let g =
        GgufFile::from_bytes(write(3, &[("s", Value::String("x".into())), ("big", Value::U64(1 << 40))], &[])).unwrap();
    let err = g.u32("s").unwrap_err();
    assert!(matches!(&err, GgufError::WrongType { key, .. } if key == "s"));
    assert!(g.u32("big").is_err());
    assert_eq!(g.u64("big").unwrap(), 1 << 40);
    let err = g.f32("nope").unwrap_err();
    assert!(matches!(&err, GgufError::MissingKey(k) if k == "nope"));
    assert!(err.to_string().contains("nope"));
    assert!(matches!(g.tensor("x"), Err(GgufError::MissingTensor(_))));
    assert!(matches!(g.str("big"), Err(GgufError::WrongType { .. })));
}
