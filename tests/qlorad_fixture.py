"""qlorad_fixture: a real qlorad on a temporary socket and database, for the tests.

    with Daemon(QLORAD, SHARED, tcp=True) as d:   # d.socket, d.host, d.token_file, d.dir
        c = Conn(d.socket)                        # or Conn(tcp=('127.0.0.1', port))
        c.ok('ping')
The daemon runs stories260K quantized to nf4; stop() sends SIGTERM and returns the exit
status (a clean stop is 0). Conn speaks raw frames, so that broken ones can be sent too."""

import atexit
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time

import msgpack

# The daemons of the tests keep their model cache (XDG_CACHE_HOME) under the build dir that
# meson names, else in a temporary directory: never in the real home.
if os.environ.get('QLORA_TEST_CACHE'):
    os.environ['XDG_CACHE_HOME'] = os.environ['QLORA_TEST_CACHE']
else:
    _cache = tempfile.mkdtemp(prefix='qlora-test-cache-')
    os.environ['XDG_CACHE_HOME'] = _cache
    atexit.register(shutil.rmtree, _cache, True)


def frame(obj):
    """obj as one frame: 4-byte big-endian length, then msgpack."""
    b = msgpack.packb(obj, use_bin_type=True)
    return struct.pack('>I', len(b)) + b


def peft_files(model_dir, alpha='8', fill=0.01, r=2):
    """A PEFT adapter of q_proj for the llama2.c model in model_dir, made here: its config
    (lora_alpha written as given) and safetensors, as adapter.import takes them."""
    dim, _, layers = struct.unpack('3i', open(os.path.join(model_dir, 'model.bin'), 'rb').read(12))
    header, body = {}, b''
    for i in range(layers):
        for part, shape in (('lora_A', [r, dim]), ('lora_B', [dim, r])):
            name = 'base_model.model.model.layers.%d.self_attn.q_proj.%s.weight' % (i, part)
            data = struct.pack('<%df' % (shape[0] * shape[1]), *[fill] * (shape[0] * shape[1]))
            header[name] = {'dtype': 'F32', 'shape': shape, 'data_offsets': [len(body), len(body) + len(data)]}
            body += data
    h = json.dumps(header).encode()
    h += b' ' * (-len(h) % 8)
    config = '{"peft_type": "LORA", "r": %d, "lora_alpha": %s, "target_modules": ["q_proj"]}' % (r, alpha)
    return {'adapter_config.json': config, 'adapter_model.safetensors': struct.pack('<Q', len(h)) + h + body}


def rss(pid):
    """Resident bytes of process pid."""
    with open('/proc/%d/status' % pid) as f:
        for line in f:
            if line.startswith('VmRSS:'):
                return int(line.split()[1]) * 1024
    raise AssertionError('no VmRSS for %d' % pid)


def expect_error(m, code, *needles):
    """m is an error response with that code, its message naming each needle."""
    assert not m['ok'], 'expected %s, got %r' % (code, m)
    assert m['error']['code'] == code, 'expected %s, got %r' % (code, m['error'])
    for n in needles:
        assert n in m['error']['message'], '%r not in %r' % (n, m['error']['message'])


class Conn:
    def __init__(self, path=None, tcp=None, timeout=120):
        if tcp:
            self.s = socket.create_connection(tcp, timeout=timeout)
        else:
            self.s = socket.socket(socket.AF_UNIX)
            self.s.settimeout(timeout)
            self.s.connect(path)
        self.buf = b''
        self.next_id = 0

    def raw(self, payload):
        self.s.sendall(payload)

    def send(self, op, args=None, **kw):
        self.next_id += 1
        req = {'id': self.next_id, 'op': op}
        if args is not None or kw:
            req['args'] = dict(args or {}, **kw)
        b = msgpack.packb(req, use_bin_type=True)
        self.s.sendall(struct.pack('>I', len(b)) + b)
        return self.next_id

    def recv(self):
        while len(self.buf) < 4 or len(self.buf) < 4 + struct.unpack('>I', self.buf[:4])[0]:
            d = self.s.recv(1 << 20)
            if not d:
                raise EOFError('connection closed')
            self.buf += d
        n = struct.unpack('>I', self.buf[:4])[0]
        m = msgpack.unpackb(self.buf[4:4 + n], raw=False)
        self.buf = self.buf[4 + n:]
        return m

    def call(self, op, args=None, events=None, **kw):
        rid = self.send(op, args, **kw)
        while True:
            m = self.recv()
            assert m['id'] == rid, 'response for %r while waiting for %d' % (m, rid)
            if 'event' in m:
                if events is not None:
                    events.append(m['event'])
                continue
            return m

    def ok(self, op, args=None, events=None, **kw):
        m = self.call(op, args, events, **kw)
        assert m['ok'], '%s failed: %r' % (op, m)
        return m['result']

    def closed(self):
        """True once the daemon has closed its side (what it sent before is read first)."""
        try:
            while True:
                d = self.s.recv(1 << 16)
                if not d:
                    return True
        except ConnectionResetError:
            return True
        except socket.timeout:
            return False

    def close(self):
        self.s.close()


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


class Daemon:
    def __init__(self, qlorad, shared, model='stories260K', tcp=False, extra=(), db=None):
        """db: a store directory to run on (kept by cleanup), else one in the temporary dir."""
        self.dir = tempfile.mkdtemp(prefix='qlora-client-test-')
        self.socket = os.path.join(self.dir, 'qlorad.sock')
        self.log = os.path.join(self.dir, 'qlorad.log')
        self.host = self.token_file = self.token = None
        argv = [qlorad, '--model', os.path.join(shared, 'models', model), '--quant', 'nf4',
                '--db', db or os.path.join(self.dir, 'db'), '--socket', self.socket, *extra]
        if tcp:
            self.token = 'qlora-client-test-token-%d' % os.getpid()
            self.token_file = os.path.join(self.dir, 'token')
            with open(self.token_file, 'w') as f:
                f.write(self.token + '\n')
            self.host = '127.0.0.1:%d' % free_port()
            argv += ['--listen', self.host, '--token-file', self.token_file]
        with open(self.log, 'wb') as log:
            self.proc = subprocess.Popen(argv, stderr=log, stdout=log)
        atexit.register(self.cleanup)  # also when a test dies of an exception
        deadline = time.time() + 60
        while not self._ready():
            if self.proc.poll() is not None or time.time() > deadline:
                self.proc.kill()
                raise RuntimeError('qlorad did not start: %s' % self.log_text())
            time.sleep(0.05)

    def _ready(self):
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(self.socket)
            return True
        except OSError:
            return False
        finally:
            s.close()

    def log_text(self):
        with open(self.log, errors='replace') as f:
            return f.read()

    def stop(self):
        """SIGTERM, then the exit status (None if it had to be killed)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                return None
        return self.proc.returncode

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.cleanup()


class Qlorad:
    """qlorad --model MODEL --quant QUANT --db DB --socket DIR/NAME.sock [extra], its log in
    DIR/NAME.log; ready once it answers ping."""

    def __init__(self, qlorad, model, db, sock_dir, name, *extra, quant='nf4'):
        self.db = db
        self.sock = os.path.join(sock_dir, name + '.sock')
        self.log = os.path.join(sock_dir, name + '.log')
        with open(self.log, 'ab') as log:
            self.p = subprocess.Popen([qlorad, '--model', model, '--quant', quant, '--db', db, '--socket', self.sock,
                                       *extra], stdout=log, stderr=log)
        atexit.register(self.reap)  # a failed test leaves no daemon behind
        for _ in range(3000):
            assert self.p.poll() is None, 'qlorad exited with %d at start:\n%s' % (self.p.returncode, self.tail())
            try:
                Conn(self.sock).ok('ping')
                return
            except (FileNotFoundError, ConnectionRefusedError):
                time.sleep(0.02)
        raise AssertionError('qlorad does not answer on %s' % self.sock)

    def tail(self):
        with open(self.log, errors='replace') as f:
            return f.read()[-3000:]

    def conn(self):
        return Conn(self.sock)

    def kill(self):
        self.p.kill()
        self.p.wait()

    def reap(self):
        if self.p.poll() is None:
            self.kill()

    def stop(self):
        """SIGTERM must end it with status 0 (a sanitizer report fails it)."""
        self.p.terminate()
        rc = self.p.wait(timeout=120)
        assert rc == 0, 'qlorad exited with %d:\n%s' % (rc, self.tail())
