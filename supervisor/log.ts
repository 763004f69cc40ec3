// One line per event on stderr, prefixed so journald/svlogd/docker logs read well.
let quiet = false;

function write(level: string, msg: string): void {
  if (quiet && level === 'debug') return;
  process.stderr.write(`fuse-svcd: ${level === 'info' ? '' : level + ': '}${msg.replace(/\n/g, ' ')}\n`);
}

export const log = {
  info: (m: string) => write('info', m),
  warn: (m: string) => write('warning', m),
  error: (m: string) => write('error', m),
  debug: (m: string) => write('debug', m),
  setQuiet(q: boolean) {
    quiet = q;
  },
};
