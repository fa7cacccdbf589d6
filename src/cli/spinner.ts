import type { Writable } from 'node:stream';

const FRAMES = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

/**
 * Progress on stderr: an animated line on a TTY, otherwise one plain line per
 * distinct message (so logs of CI runs stay readable).
 */
export class Spinner {
  readonly #out: Writable;
  readonly #tty: boolean;
  #text = '';
  #frame = 0;
  #timer: NodeJS.Timeout | undefined;

  constructor(out: Writable) {
    this.#out = out;
    this.#tty = Boolean((out as { isTTY?: boolean }).isTTY);
  }

  start(text: string): void {
    this.update(text);
    if (this.#tty && !this.#timer) {
      this.#timer = setInterval(() => this.#render(), 80);
      this.#timer.unref();
    }
  }

  update(text: string): void {
    if (text === this.#text) return;
    this.#text = text;
    if (this.#tty) this.#render();
    else this.#out.write(`${text}\n`);
  }

  /** Stops animating; `final` (if given) replaces the spinner line. */
  stop(final?: string): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
    if (this.#tty) this.#out.write(`\r\x1b[2K${final ? `${final}\n` : ''}`);
    else if (final) this.#out.write(`${final}\n`);
  }

  #render(): void {
    this.#frame = (this.#frame + 1) % FRAMES.length;
    this.#out.write(`\r\x1b[2K${FRAMES[this.#frame]} ${this.#text}`);
  }
}
