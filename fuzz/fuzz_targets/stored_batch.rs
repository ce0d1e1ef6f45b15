//! A produced batch as the broker checks it before storing (`check_records`: every record
//! decodes, compressed batches decompressed) and as readers decode it (`payload` and
//! `Records::with_payload`). The input's length and CRC fields are made to hold, so the
//! fuzzer spends its time in the records and the four decompressors rather than on the CRC.
//! Property: no panic, and whatever the broker accepts, every reader decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if data.len() < weir_batch::HEADER_LEN {
        assert!(weir_batch::check_records(data).is_err());
        return;
    }
    let mut batch = data.to_vec();
    let len = (batch.len() - 12) as i32;
    batch[8..12].copy_from_slice(&len.to_be_bytes());
    batch[16] = weir_batch::MAGIC_V2;
    weir_batch::header::reseal(&mut batch);
    let accepted = weir_batch::check_records(&batch).is_ok();
    let decoded = weir_batch::payload(&batch).and_then(|(h, section)| {
        weir_batch::Records::with_payload(h, &section).try_for_each(|r| r.map(drop))
    });
    assert_eq!(accepted, decoded.is_ok(), "{decoded:?}");
});
