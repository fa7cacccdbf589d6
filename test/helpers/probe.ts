/**
 * A probe run inside a sandbox: it tries what untrusted code would try and
 * reports what happened, as one JSON object. The tests assert its answers.
 * Python (Debian's /usr/bin/python3, bound read-only into every sandbox):
 * raw sockets and syscalls without extra tools.
 */
export const PROBE = String.raw`
import json, os, socket, subprocess, sys, errno
a = json.loads(sys.argv[1])
out = {}
st = {}
for line in open('/proc/self/status'):
    k, _, v = line.partition(':')
    st[k] = v.strip()
out['uid'] = os.getuid(); out['euid'] = os.geteuid(); out['gid'] = os.getgid()
out['capEff'] = st.get('CapEff'); out['capBnd'] = st.get('CapBnd'); out['capPrm'] = st.get('CapPrm')
out['noNewPrivs'] = st.get('NoNewPrivs')
out['unshareUser'] = subprocess.run(['unshare', '-U', 'true'], capture_output=True).returncode
out['unshareUserMap'] = subprocess.run(['unshare', '-Ur', 'true'], capture_output=True).returncode
def tcp(host, port, timeout=2):
    fam = socket.AF_INET6 if ':' in host else socket.AF_INET
    s = socket.socket(fam, socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.connect((host, port)); return 'connected'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__
    finally:
        s.close()
def udp(host, port):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.sendto(b'probe', (host, port)); return 'sent'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
out['tcp'] = {k: tcp(h, p) for k, (h, p) in a.get('tcp', {}).items()}
out['udp'] = {k: udp(h, p) for k, (h, p) in a.get('udp', {}).items()}
def unix(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path); return 'connected'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
    finally:
        s.close()
out['unix'] = {p: unix(p) for p in a.get('unix', [])}
out['visible'] = {p: os.path.exists(p) for p in a.get('paths', [])}
link = '/workspace/planted'
try:
    os.symlink(a['plant'], link)
except FileExistsError:
    pass
try:
    out['throughLink'] = os.listdir(link)
except OSError as e:
    out['throughLink'] = errno.errorcode.get(e.errno, str(e))
def write(p):
    try:
        with open(p, 'w') as f: f.write('x')
        return 'written'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
out['write'] = {p: write(p) for p in a.get('write', [])}
def sig(pid):
    try:
        os.kill(pid, 0); return 'signalled'
    except OSError as e:
        return errno.errorcode.get(e.errno, str(e))
out['signal'] = {str(p): sig(p) for p in a.get('pids', [])}
out['procVisible'] = {str(p): os.path.exists('/proc/%d' % p) for p in a.get('pids', [])}
out['shadow'] = os.path.exists('/etc/shadow')
print(json.dumps(out))
`;

export interface ProbeArgs {
  tcp?: Record<string, [string, number]>;
  udp?: Record<string, [string, number]>;
  unix?: string[];
  paths?: string[];
  plant: string;
  write?: string[];
  pids?: number[];
}

export interface ProbeResult {
  uid: number;
  euid: number;
  gid: number;
  capEff: string;
  capBnd: string;
  capPrm: string;
  noNewPrivs: string;
  unshareUser: number;
  unshareUserMap: number;
  tcp: Record<string, string>;
  udp: Record<string, string>;
  unix: Record<string, string>;
  visible: Record<string, boolean>;
  throughLink: string | string[];
  write: Record<string, string>;
  signal: Record<string, string>;
  procVisible: Record<string, boolean>;
  shadow: boolean;
}

/** The exec body that runs the probe. */
export function probeCommand(args: ProbeArgs): string[] {
  return ['/usr/bin/python3', '-c', PROBE, JSON.stringify(args)];
}
