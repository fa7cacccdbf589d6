#!/usr/bin/env node
// The CLI runs compiled JavaScript; `npm install` builds it (the `prepare` script).
import '../dist/src/cli/main.js';
