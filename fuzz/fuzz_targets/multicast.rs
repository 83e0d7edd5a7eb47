//! A datagram as a multicast sender or receiver reads it: decoded with and without the
//! session's key; a packet that decodes encodes to bytes that decode to the same packet.
#![no_main]

use fogcore::net::multicast::wire::{self, Key};
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: fog_fuzz::write_seeds("multicast"), |data: &[u8]| {
    let key = Key(fog_fuzz::MULTICAST_KEY);
    let _ = wire::decode(data, None, None);
    if let Ok(packet) = wire::decode(data, Some(fog_fuzz::MULTICAST_SESSION), Some(&key)) {
        let mut bytes = Vec::new();
        wire::encode(fog_fuzz::MULTICAST_SESSION, &key, &packet, &mut bytes);
        assert_eq!(
            wire::decode(&bytes, Some(fog_fuzz::MULTICAST_SESSION), Some(&key)).as_ref(),
            Ok(&packet),
            "re-encoded as {bytes:?}"
        );
    }
});
