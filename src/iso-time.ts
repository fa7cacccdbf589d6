let isoMs = 0;
let isoText = '';
let isoSec = -1;
let isoPrefix = '';

/**
 * `new Date().toISOString()` for log lines and decisions, without a Date per
 * call: the date and time formatted once per second, the milliseconds
 * appended, the text kept for the rest of the millisecond.
 */
export function isoNow(): string {
  const ms = Date.now();
  if (ms !== isoMs) {
    isoMs = ms;
    const sec = Math.floor(ms / 1000);
    if (sec !== isoSec) {
      isoSec = sec;
      isoPrefix = new Date(sec * 1000).toISOString().slice(0, -4); // through the '.'
    }
    const frac = ms - sec * 1000;
    isoText = isoPrefix + (frac < 10 ? '00' : frac < 100 ? '0' : '') + frac + 'Z';
  }
  return isoText;
}
