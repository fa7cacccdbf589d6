export { seededRandom } from '../../src/seeded-random.js';
