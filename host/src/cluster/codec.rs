//! The gossip wire format: foca headers and member updates as MessagePack, each packet opened
//! by a version byte so a future format can be told apart instead of misread.

use bytes::{Buf, BufMut};
use foca::{Header, Member};

use super::identity::MemberId;

/// Bump when the gossip encoding changes incompatibly.
pub const GOSSIP_WIRE_VERSION: u8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("gossip packet of wire version {0}, this node speaks {GOSSIP_WIRE_VERSION}")]
    Version(u8),
    #[error("empty gossip packet")]
    Empty,
    #[error("no room in the packet")]
    NoRoom,
    #[error("cannot encode gossip: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    #[error("cannot decode gossip: {0}")]
    Decode(#[from] rmp_serde::decode::Error),
}

/// foca's codec for [`MemberId`] identities.
#[derive(Debug, Default, Clone, Copy)]
pub struct GossipCodec;

impl GossipCodec {
    fn put(
        value: &impl serde::Serialize,
        prefix: Option<u8>,
        mut buf: impl BufMut,
    ) -> Result<(), CodecError> {
        let encoded = rmp_serde::to_vec(value)?;
        let needed = encoded.len() + usize::from(prefix.is_some());
        // foca requires an item that does not fit to leave the buffer untouched.
        if buf.remaining_mut() < needed {
            return Err(CodecError::NoRoom);
        }
        if let Some(byte) = prefix {
            buf.put_u8(byte);
        }
        buf.put_slice(&encoded);
        Ok(())
    }
}

impl foca::Codec<MemberId> for GossipCodec {
    type Error = CodecError;

    fn encode_header(
        &mut self,
        header: &Header<MemberId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        GossipCodec::put(header, Some(GOSSIP_WIRE_VERSION), buf)
    }

    fn decode_header(&mut self, mut buf: impl Buf) -> Result<Header<MemberId>, CodecError> {
        if !buf.has_remaining() {
            return Err(CodecError::Empty);
        }
        let version = buf.get_u8();
        if version != GOSSIP_WIRE_VERSION {
            return Err(CodecError::Version(version));
        }
        Ok(rmp_serde::from_read((&mut buf).reader())?)
    }

    fn encode_member(
        &mut self,
        member: &Member<MemberId>,
        buf: impl BufMut,
    ) -> Result<(), CodecError> {
        GossipCodec::put(member, None, buf)
    }

    fn decode_member(&mut self, mut buf: impl Buf) -> Result<Member<MemberId>, CodecError> {
        Ok(rmp_serde::from_read((&mut buf).reader())?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use foca::Codec;

    fn id(port: u16) -> MemberId {
        MemberId {
            node_id: format!("node-{port}"),
            addr: ([127, 0, 0, 1], port).into(),
            generation: 1_700_000_000_000 + u64::from(port),
        }
    }

    #[test]
    fn header_and_members_round_trip_and_advance_the_cursor() {
        let mut codec = GossipCodec;
        let header = Header {
            src: id(1),
            src_incarnation: 3,
            dst: id(2),
            message: foca::Message::Ping(7),
        };
        let members = [Member::alive(id(3)), Member::down(id(4))];
        let mut buf = Vec::new();
        codec.encode_header(&header, &mut buf).expect("header");
        for member in &members {
            codec.encode_member(member, &mut buf).expect("member");
        }
        let mut cursor = &buf[..];
        assert_eq!(
            codec.decode_header(&mut cursor).expect("decode header"),
            header
        );
        for member in &members {
            assert_eq!(
                &codec.decode_member(&mut cursor).expect("decode member"),
                member
            );
        }
        assert!(cursor.is_empty(), "every byte consumed");
    }

    #[test]
    fn foreign_versions_and_garbage_are_refused_and_full_buffers_stay_clean() {
        let mut codec = GossipCodec;
        assert!(matches!(
            codec.decode_header(&[9u8, 1, 2][..]),
            Err(CodecError::Version(9))
        ));
        assert!(
            codec
                .decode_header(&[GOSSIP_WIRE_VERSION, 0xc1][..])
                .is_err()
        );
        assert!(codec.decode_header(&[][..]).is_err());

        let mut small = [0u8; 4];
        let mut slice = &mut small[..];
        assert!(
            codec
                .encode_member(&Member::alive(id(5)), &mut slice)
                .is_err()
        );
        assert_eq!(small, [0u8; 4]);
    }
}
