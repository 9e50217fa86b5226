"""qlorad_fixture: a real qlorad on a temporary socket and database, for the client tests.

    with Daemon(QLORAD, SHARED, tcp=True) as d:   # d.socket, d.host, d.token_file, d.dir
        ...
The daemon runs stories260K quantized to nf4; stop() sends SIGTERM and returns the exit
status (a clean stop is 0)."""

import atexit
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time


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
