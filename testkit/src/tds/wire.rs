//! TDS framing: packets on the socket, a reader over a message's bytes, and a writer that
//! builds reply tokens (MS-TDS 2.2.3 packets, 2.2.7 tokens).

use std::io::{self, Read, Write};
use std::net::TcpStream;

/// Packet types (MS-TDS 2.2.3.1.1).
pub const SQL_BATCH: u8 = 0x01;
/// RPC request.
pub const RPC: u8 = 0x03;
/// Tabular result: every server reply.
pub const REPLY: u8 = 0x04;
/// Attention (cancel).
pub const ATTENTION: u8 = 0x06;
/// Bulk load data.
pub const BULK_LOAD: u8 = 0x07;
/// Transaction manager request.
pub const TRANSACTION_MANAGER: u8 = 0x0E;
/// LOGIN7.
pub const LOGIN7: u8 = 0x10;
/// PRELOGIN.
pub const PRELOGIN: u8 = 0x12;

/// DONE status bits (MS-TDS 2.2.7.6).
pub const DONE_MORE: u16 = 0x01;
/// The statement failed.
pub const DONE_ERROR: u16 = 0x02;
/// The row count is valid.
pub const DONE_COUNT: u16 = 0x10;
/// Acknowledges an attention.
pub const DONE_ATTN: u16 = 0x20;

/// SQL_Latin1_General_CP1_CI_AS: LCID 0x0409, case/accent/kana/width flags, sort id 52.
pub const COLLATION: [u8; 5] = [0x09, 0x04, 0xD0, 0x00, 0x34];

/// One packet's header fields that matter here.
pub struct Packet {
    /// The packet type.
    pub kind: u8,
    /// True on the last packet of a message.
    pub last: bool,
    /// The payload after the 8-byte header.
    pub data: Vec<u8>,
}

/// Reads one packet; `Ok(None)` when the client closed the connection cleanly.
pub fn read_packet(stream: &mut TcpStream) -> io::Result<Option<Packet>> {
    let mut header = [0u8; 8];
    match stream.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let length = u16::from_be_bytes([header[2], header[3]]) as usize;
    if length < 8 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bad packet length",
        ));
    }
    let mut data = vec![0u8; length - 8];
    stream.read_exact(&mut data)?;
    Ok(Some(Packet {
        kind: header[0],
        last: header[1] & 0x01 != 0,
        data,
    }))
}

/// Writes `payload` as a message of `kind`, split into packets of at most `packet_size` bytes.
pub fn write_message(
    stream: &mut TcpStream,
    kind: u8,
    payload: &[u8],
    packet_size: usize,
) -> io::Result<()> {
    let chunk_size = packet_size - 8;
    let chunks: Vec<&[u8]> = if payload.is_empty() {
        vec![&[][..]]
    } else {
        payload.chunks(chunk_size).collect()
    };
    let mut out = Vec::with_capacity(payload.len() + chunks.len() * 8);
    for (i, chunk) in chunks.iter().enumerate() {
        let last = i + 1 == chunks.len();
        out.push(kind);
        out.push(if last { 0x01 } else { 0x00 });
        out.extend_from_slice(&((chunk.len() + 8) as u16).to_be_bytes());
        out.extend_from_slice(&[0, 0]); // SPID
        out.push((i + 1) as u8); // packet id
        out.push(0); // window
        out.extend_from_slice(chunk);
    }
    stream.write_all(&out)?;
    stream.flush()
}

/// A reader over a whole message, with the little-endian primitives TDS uses.
pub struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

/// A message ended early or held something this server does not understand.
#[derive(Debug)]
pub struct Malformed(pub String);

/// Shorthand for reads that can find a malformed message.
pub type ReadResult<T> = Result<T, Malformed>;

impl<'a> Reader<'a> {
    /// Starts at the first byte.
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader { bytes, pos: 0 }
    }

    /// True when every byte was read.
    pub fn is_empty(&self) -> bool {
        self.pos >= self.bytes.len()
    }

    /// Bytes not read yet.
    pub fn rest(&self) -> &'a [u8] {
        &self.bytes[self.pos.min(self.bytes.len())..]
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> ReadResult<&'a [u8]> {
        if self.pos + n > self.bytes.len() {
            return Err(Malformed(format!(
                "message ended early: wanted {n} bytes at offset {}",
                self.pos
            )));
        }
        let out = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    /// One byte.
    pub fn u8(&mut self) -> ReadResult<u8> {
        Ok(self.take(1)?[0])
    }

    /// Little-endian u16.
    pub fn u16(&mut self) -> ReadResult<u16> {
        let b = self.take(2)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    /// Little-endian u32.
    pub fn u32(&mut self) -> ReadResult<u32> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// Little-endian u64.
    pub fn u64(&mut self) -> ReadResult<u64> {
        let b = self.take(8)?;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }

    /// UTF-16LE text of `chars` code units.
    pub fn utf16(&mut self, chars: usize) -> ReadResult<String> {
        utf16_to_string(self.take(chars * 2)?)
    }

    /// B_VARCHAR: a one-byte character count, then UTF-16LE.
    pub fn b_varchar(&mut self) -> ReadResult<String> {
        let n = self.u8()? as usize;
        self.utf16(n)
    }

    /// US_VARCHAR: a two-byte character count, then UTF-16LE.
    pub fn us_varchar(&mut self) -> ReadResult<String> {
        let n = self.u16()? as usize;
        self.utf16(n)
    }

    /// Skips ALL_HEADERS (MS-TDS 2.2.5.3), which starts SQL batch, RPC and TM requests.
    pub fn skip_all_headers(&mut self) -> ReadResult<()> {
        let total = self.u32()? as usize;
        if total < 4 {
            return Err(Malformed(
                "ALL_HEADERS shorter than its length field".into(),
            ));
        }
        self.take(total - 4)?;
        Ok(())
    }
}

/// Decodes UTF-16LE bytes.
pub fn utf16_to_string(bytes: &[u8]) -> ReadResult<String> {
    let units: Vec<u16> = bytes
        .chunks_exact(2)
        .map(|c| u16::from_le_bytes([c[0], c[1]]))
        .collect();
    String::from_utf16(&units).map_err(|_| Malformed("invalid UTF-16 text".into()))
}

/// Encodes text as UTF-16LE bytes.
pub fn string_to_utf16(text: &str) -> Vec<u8> {
    text.encode_utf16().flat_map(|u| u.to_le_bytes()).collect()
}

/// A reply under construction: a byte buffer with one method per token.
#[derive(Default)]
pub struct Reply {
    /// The token bytes so far.
    pub bytes: Vec<u8>,
}

impl Reply {
    /// Appends a B_VARCHAR.
    pub fn b_varchar(&mut self, text: &str) {
        let units = text.encode_utf16().count().min(255);
        self.bytes.push(units as u8);
        for u in text.encode_utf16().take(units) {
            self.bytes.extend_from_slice(&u.to_le_bytes());
        }
    }

    /// Appends a US_VARCHAR.
    pub fn us_varchar(&mut self, text: &str) {
        let units: Vec<u16> = text.encode_utf16().take(u16::MAX as usize).collect();
        self.bytes
            .extend_from_slice(&(units.len() as u16).to_le_bytes());
        for u in units {
            self.bytes.extend_from_slice(&u.to_le_bytes());
        }
    }

    /// Appends a token whose body is prefixed by its u16 length.
    fn sized_token(&mut self, token: u8, body: Reply) {
        self.bytes.push(token);
        self.bytes
            .extend_from_slice(&(body.bytes.len() as u16).to_le_bytes());
        self.bytes.extend_from_slice(&body.bytes);
    }

    /// DONE (0xFD), DONEPROC (0xFE) or DONEINPROC (0xFF).
    pub fn done_token(&mut self, token: u8, status: u16, rows: u64) {
        self.bytes.push(token);
        self.bytes.extend_from_slice(&status.to_le_bytes());
        self.bytes.extend_from_slice(&0u16.to_le_bytes()); // current command
        self.bytes.extend_from_slice(&rows.to_le_bytes());
    }

    /// DONE with a status and row count.
    pub fn done(&mut self, status: u16, rows: u64) {
        self.done_token(0xFD, status, rows);
    }

    /// ERROR (0xAA) or INFO (0xAB).
    pub fn message(&mut self, token: u8, number: u32, state: u8, class: u8, text: &str) {
        let mut body = Reply::default();
        body.bytes.extend_from_slice(&number.to_le_bytes());
        body.bytes.push(state);
        body.bytes.push(class);
        body.us_varchar(text);
        body.b_varchar("stevedore-tds");
        body.b_varchar("");
        body.bytes.extend_from_slice(&1u32.to_le_bytes()); // line number
        self.sized_token(token, body);
    }

    /// ERROR token.
    pub fn error(&mut self, number: u32, state: u8, class: u8, text: &str) {
        self.message(0xAA, number, state, class, text);
    }

    /// ENVCHANGE with string values (database, language, packet size).
    pub fn env_change_text(&mut self, kind: u8, new: &str, old: &str) {
        let mut body = Reply::default();
        body.bytes.push(kind);
        body.b_varchar(new);
        body.b_varchar(old);
        self.sized_token(0xE3, body);
    }

    /// ENVCHANGE with binary values (collation, transactions).
    pub fn env_change_bytes(&mut self, kind: u8, new: &[u8], old: &[u8]) {
        let mut body = Reply::default();
        body.bytes.push(kind);
        body.bytes.push(new.len() as u8);
        body.bytes.extend_from_slice(new);
        body.bytes.push(old.len() as u8);
        body.bytes.extend_from_slice(old);
        self.sized_token(0xE3, body);
    }

    /// LOGINACK for TDS 7.4.
    pub fn login_ack(&mut self) {
        let mut body = Reply::default();
        body.bytes.push(1); // SQL_TSQL
        body.bytes.extend_from_slice(&0x7400_0004u32.to_be_bytes());
        body.b_varchar("Microsoft SQL Server");
        body.bytes.extend_from_slice(&[16, 0, 0x10, 0x00]); // 16.0.4096
        self.sized_token(0xAD, body);
    }

    /// RETURNSTATUS (0x79).
    pub fn return_status(&mut self, status: i32) {
        self.bytes.push(0x79);
        self.bytes.extend_from_slice(&status.to_le_bytes());
    }
}
