// AudioWorklet: hands the microphone's first channel to the page in ~20 ms blocks.

class Capture extends AudioWorkletProcessor {
  constructor() {
    super();
    this.block = new Float32Array(Math.round(sampleRate / 50));
    this.fill = 0;
  }

  process(inputs) {
    const channel = inputs[0] && inputs[0][0];
    if (channel) {
      for (let i = 0; i < channel.length; i++) {
        this.block[this.fill++] = channel[i];
        if (this.fill === this.block.length) {
          this.port.postMessage(this.block.slice());
          this.fill = 0;
        }
      }
    }
    return true;
  }
}

registerProcessor("floe-capture", Capture);
