//! The codec every giftx.v1 stub uses: prost's, except that a message
//! that does not parse is the sender's mistake, answered
//! `INVALID_ARGUMENT` instead of tonic-prost's `INTERNAL`.
//!
//! A server decodes only what its caller sent, so on the server every
//! decode error (invalid UTF-8 in a string, a truncated field, a wrong
//! wire type, nesting deeper than prost's recursion limit, a varint
//! overflow) is a client error, and must not count as a server fault (the
//! INTERNAL alerts). Encoding is prost's, unchanged.

use std::marker::PhantomData;

use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// prost encoding; decode errors become `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct GiftxCodec<T, U> {
    _pd: PhantomData<(T, U)>,
}

impl<T, U> Default for GiftxCodec<T, U> {
    fn default() -> Self {
        GiftxCodec { _pd: PhantomData }
    }
}

impl<T, U> Codec for GiftxCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = MessageDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstEncoder::new(BufferSettings::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        MessageDecoder(ProstDecoder::new(BufferSettings::default()))
    }
}

/// prost's decoder with its errors answered `INVALID_ARGUMENT`.
#[derive(Debug, Clone)]
pub struct MessageDecoder<U>(ProstDecoder<U>);

impl<U: prost::Message + Default> Decoder for MessageDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        // ProstDecoder fails only when the bytes are not a valid message.
        self.0.decode(buf).map_err(|s| {
            Status::invalid_argument(format!(
                "the message is not valid protobuf for {}: {}",
                std::any::type_name::<U>()
                    .rsplit("::")
                    .next()
                    .unwrap_or("this method"),
                s.message()
            ))
        })
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_decoder_is_the_one_tonic_prost_would_use_but_answers_invalid_argument() {
        // Invalid UTF-8 in field 1 (a string) of GetCampaignRequest.
        let bytes: &[u8] = &[0x0a, 0x02, 0xff, 0xfe];
        let err = <crate::v1::GetCampaignRequest as prost::Message>::decode(bytes).unwrap_err();
        let s = Status::invalid_argument(err.to_string());
        assert_eq!(s.code(), tonic::Code::InvalidArgument);
    }
}
