#!/usr/bin/env node
// Makes the two bin entries executable after tsc (tsc does not keep modes).
import { chmodSync } from 'node:fs';
for (const f of ['dist/supervisor/main.js', 'dist/helper/request.js']) chmodSync(f, 0o755);
