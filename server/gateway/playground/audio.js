// Audio for the realtime tab: a streaming resampler (windowed sinc, low-passed below the lower
// Nyquist so 48 kHz -> 24 kHz does not alias), PCM16 <-> float, base64.

const TAPS = 16; // zero crossings of the sinc on each side, at the output rate when downsampling

function blackman(u) { // u in [-1, 1]
  return 0.42 + 0.5 * Math.cos(Math.PI * u) + 0.08 * Math.cos(2 * Math.PI * u);
}

/**
 * Band-limited resampling of a stream given in chunks of any size: `push(chunk)` returns the
 * output samples that are final so far (the filter looks `half` input samples ahead).
 */
export class Resampler {
  constructor(inRate, outRate) {
    this.inRate = inRate;
    this.outRate = outRate;
    this.step = inRate / outRate;               // input samples per output sample
    this.cutoff = Math.min(1, outRate / inRate) * 0.92; // fraction of the input Nyquist kept
    this.half = Math.ceil(TAPS / Math.min(1, outRate / inRate));
    this.buffer = new Float32Array(this.half);  // zeros before the first sample
    this.position = this.half;                  // input position of the next output sample
  }

  kernel(d) {
    if (Math.abs(d) >= this.half) return 0;
    const x = this.cutoff * d;
    const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
    return this.cutoff * sinc * blackman(d / this.half);
  }

  push(chunk) {
    if (this.inRate === this.outRate) return Float32Array.from(chunk);
    const data = new Float32Array(this.buffer.length + chunk.length);
    data.set(this.buffer);
    data.set(chunk, this.buffer.length);
    const out = [];
    while (Math.floor(this.position) + this.half < data.length) {
      const centre = Math.floor(this.position);
      let acc = 0;
      for (let k = centre - this.half + 1; k <= centre + this.half; k++) acc += data[k] * this.kernel(this.position - k);
      out.push(acc);
      this.position += this.step;
    }
    const drop = Math.max(0, Math.floor(this.position) - this.half + 1);
    this.buffer = data.slice(drop);
    this.position -= drop;
    return Float32Array.from(out);
  }
}

export function floatToPcm16(samples) {
  const out = new Int16Array(samples.length);
  for (let i = 0; i < samples.length; i++) {
    const s = Math.max(-1, Math.min(1, samples[i]));
    out[i] = s < 0 ? Math.round(s * 0x8000) : Math.round(s * 0x7fff);
  }
  return out;
}

export function pcm16ToFloat(pcm) {
  const out = new Float32Array(pcm.length);
  for (let i = 0; i < pcm.length; i++) out[i] = pcm[i] / 0x8000;
  return out;
}

export function bytesToBase64(bytes) {
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  return btoa(text);
}

export function base64ToBytes(b64) {
  const text = atob(b64);
  const out = new Uint8Array(text.length);
  for (let i = 0; i < text.length; i++) out[i] = text.charCodeAt(i);
  return out;
}

/** Little-endian PCM16 bytes (the wire's `audio/pcm`) from float samples, and back. */
export function encodePcm(samples) {
  const pcm = floatToPcm16(samples);
  const bytes = new Uint8Array(pcm.length * 2);
  const view = new DataView(bytes.buffer);
  pcm.forEach((v, i) => view.setInt16(2 * i, v, true));
  return bytes;
}

export function decodePcm(bytes) {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const pcm = new Int16Array(bytes.byteLength >> 1);
  for (let i = 0; i < pcm.length; i++) pcm[i] = view.getInt16(2 * i, true);
  return pcm16ToFloat(pcm);
}
