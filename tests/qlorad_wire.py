"""qlorad_wire: what the daemon tests share: a raw-frame client of the wire protocol
(length-prefixed msgpack frames, so that broken frames can be sent too) and a qlorad
process on a socket and store of the caller's choosing, to stop, kill and restart."""

import atexit
import os
import socket
import struct
import subprocess
import time

import msgpack


class Conn:
    def __init__(self, path, tcp=None):
        if tcp:
            self.s = socket.create_connection(tcp, timeout=120)
        else:
            self.s = socket.socket(socket.AF_UNIX)
            self.s.settimeout(120)
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
        try:
            return self.s.recv(1) == b''
        except (ConnectionResetError, socket.timeout):
            return True

    def close(self):
        self.s.close()


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
