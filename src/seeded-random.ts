/** A seeded xorshift32 generator (randomised tests, the bench's peer orders): `rnd(n)` is an integer in [0, n), the same sequence every run. */
export function seededRandom(seed: number): (n: number) => number {
  let s = seed | 0 || 1;
  return (n) => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return (s >>> 0) % n;
  };
}
