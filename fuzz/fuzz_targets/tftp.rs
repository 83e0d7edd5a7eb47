//! A datagram as the TFTP server receives it: decoded; a packet that decodes encodes to bytes
//! that decode to the same packet.
#![no_main]

use fogcore::net::tftp::codec::Packet;
use libfuzzer_sys::fuzz_target;

fuzz_target!(init: fog_fuzz::write_seeds("tftp"), |data: &[u8]| {
    if let Ok(packet) = Packet::decode(data) {
        let bytes = packet.encode();
        assert_eq!(Packet::decode(&bytes).as_ref(), Ok(&packet), "re-encoded as {bytes:?}");
    }
});
