import { randomBytes, randomInt } from 'node:crypto';

const ADJECTIVES = (
  'able bold brave brisk calm clever cosmic crisp daring deft eager fair fancy fleet gentle glad golden grand ' +
  'happy hardy jolly keen kind lively lucky merry mighty misty nimble noble plucky proud quick quiet rapid ' +
  'ready regal rosy rustic shiny silent silver sleek smart snowy solar sunny swift tidy vivid witty young zesty'
).split(' ');
const ANIMALS = (
  'badger beaver bison bobcat crane dingo dolphin eagle falcon ferret finch fox gecko heron ibex jackal ' +
  'koala lemur lynx marmot marten mole moose newt ocelot orca osprey otter owl panda pelican puffin quail ' +
  'rabbit raven seal shrew sparrow stoat swan tapir tiger toad trout turtle viper walrus weasel wolf wren yak'
).split(' ');

/** Two readable words, e.g. `swift-otter`. */
export function generateName(): string {
  return `${ADJECTIVES[randomInt(ADJECTIVES.length)]}-${ANIMALS[randomInt(ANIMALS.length)]}`;
}

/** A name with a short random suffix, for when the two-word space is crowded. */
export function generateSuffixedName(): string {
  return `${generateName()}-${randomBytes(2).toString('hex')}`;
}

export function generateSandboxId(): string {
  return `sbx_${randomBytes(8).toString('hex')}`;
}
