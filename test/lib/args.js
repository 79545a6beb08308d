'use strict';
/*
 * test/lib/args.js: the command line of the Node test helpers (the callback
 * relay, the S3 server): --name value or --name=value for each key of the
 * defaults, --verbose as a flag; numbers stay strings, the caller converts.
 */
function parseArgs(argv, defaults) {
  const opt = { ...defaults, verbose: false };
  for (let i = 0; i < argv.length; i++) {
    const m = /^--([a-z-]+)(?:=(.*))?$/.exec(argv[i]);
    if (!m || !(m[1] in opt)) throw new Error(`unknown argument ${argv[i]}`);
    if (m[1] === 'verbose') opt.verbose = true;
    else opt[m[1]] = m[2] !== undefined ? m[2] : argv[++i];
  }
  return opt;
}

module.exports = { parseArgs };
