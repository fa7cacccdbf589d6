// tap's `after` script (.taprc): stops the test dockerd once no tap run holds a lease on it.
import { releaseEngine } from './docker.js';

await releaseEngine();
