//! Helpers the fuzz targets share: splitting an input into pieces the way a
//! network would, so a parser fed in pieces can be compared with one fed whole.

/// Splits `data` into pieces whose lengths come from `seed` (a small
/// xorshift), each between 1 and 64 bytes. Every byte of `data` is in exactly
/// one piece, in order.
pub fn pieces(seed: u32, data: &[u8]) -> Vec<&[u8]> {
    let mut state = seed | 1;
    let mut out = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 64) as usize + 1;
        let (head, tail) = rest.split_at(len.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

/// The first four bytes of `data` as a seed, and the rest.
pub fn seed_and_rest(data: &[u8]) -> Option<(u32, &[u8])> {
    if data.len() < 4 {
        return None;
    }
    let (seed, rest) = data.split_at(4);
    Some((u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]), rest))
}
