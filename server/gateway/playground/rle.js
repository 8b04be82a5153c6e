// COCO run-length encoding, decoded as pycocotools does (maskApi.c: rleFrString, rleDecode).
//
// `counts` is a string of 6-bit groups (chr(48 + g)): each count is LEB128-like in 5-bit
// pieces, the 0x20 bit meaning "more", the last piece's 0x10 bit its sign; from the fourth count
// on, a count is stored as its difference to the count two before. Runs alternate 0, 1, 0, ...
// starting with zeros, over the pixels in column-major (Fortran) order.

/** The run lengths of a compressed RLE string. */
export function countsFromString(s) {
  const counts = [];
  let p = 0;
  while (p < s.length) {
    let x = 0;
    let k = 0;
    let more = true;
    while (more) {
      if (p >= s.length) throw new Error("RLE string ends inside a count");
      const c = s.charCodeAt(p) - 48;
      if (c < 0 || c > 63) throw new Error(`RLE string has a character out of range at ${p}`);
      x |= (c & 0x1f) << (5 * k);
      more = (c & 0x20) !== 0;
      p += 1;
      k += 1;
      if (!more && (c & 0x10)) x |= -1 << (5 * k);
    }
    if (counts.length > 2) x += counts[counts.length - 2];
    counts.push(x);
  }
  return counts;
}

/** {size: [h, w], counts} -> Uint8Array of h*w in row-major order (1 = inside the mask). */
export function decodeRle(rle) {
  const [h, w] = rle.size;
  const counts = typeof rle.counts === "string" ? countsFromString(rle.counts) : rle.counts;
  const n = h * w;
  const mask = new Uint8Array(n);
  let i = 0; // column-major position
  let value = 0;
  for (const count of counts) {
    if (count < 0 || i + count > n) throw new Error("RLE counts do not fit the mask's size");
    if (value) {
      for (let j = i; j < i + count; j++) mask[(j % h) * w + Math.floor(j / h)] = 1;
    }
    i += count;
    value ^= 1;
  }
  if (i !== n) throw new Error(`RLE counts cover ${i} of ${n} pixels`);
  return mask;
}
