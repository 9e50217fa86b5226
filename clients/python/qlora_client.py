"""qlora_client: a Python client for qlorad (needs python3-msgpack).

    from qlora_client import Client, QloraError
    with Client(socket='/tmp/qlorad.sock') as c:          # or Client(host='h:7070', token='...')
        print(c.status()['quant'])
        job = c.submit('shakespeare', 'train.txt', steps=100)        # uploads the file
        w = c.watch(job['job_id'])
        for event in w:                                   # streaming ops are iterators
            print(event)
        print(w.result['state'])                          # the final reply, after the events
        try:
            c.adapter('missing')
        except QloraError as e:
            print(e.code, e.message)                      # 'not_found', '...'

Every op of the protocol (docs/protocol.md) is a method; `call(op, **args)` reaches any
other. Requests can be pipelined: `send()` returns an id, `wait(id)` collects its reply,
and frames for other ids are kept for their own waits. A Client is not thread-safe.
"""

import collections
import os
import re
import socket as socketlib
import struct

import msgpack

MAX_FRAME = 1 << 30


class QloraError(Exception):
    """The server answered with an error: `code` (e.g. 'not_found') and `message`."""

    def __init__(self, code, message):
        super().__init__('%s: %s' % (code, message))
        self.code = code
        self.message = message


class QloraConnectionError(OSError):
    """The connection failed, closed, or carried something that is not the protocol."""


class Stream:
    """The events of one streaming request, as an iterator; `result` holds the final
    reply once the iteration has ended (a server error is raised as QloraError)."""

    def __init__(self, client, request_id):
        self._client = client
        self.id = request_id
        self.result = None
        self.done = False

    def __iter__(self):
        while not self.done:
            frame = self._client._next_frame(self.id)
            if 'event' in frame:
                yield frame['event']
                continue
            self.done = True
            self.result = self._client._final(frame)

    def wait(self):
        """Skips the remaining events and returns the final result."""
        for _ in self:
            pass
        return self.result


class Client:
    def __init__(self, socket=None, host=None, token=None, timeout=None):
        """Connects to the Unix socket path `socket`, or to `host` ("HOST:PORT") over TCP,
        authenticating with `token` first as the protocol requires."""
        if (socket is None) == (host is None):
            raise ValueError('give exactly one of socket= and host=')
        try:
            if socket is not None:
                self._where = "socket '%s'" % socket
                self._sock = socketlib.socket(socketlib.AF_UNIX, socketlib.SOCK_STREAM)
                self._sock.settimeout(timeout)
                self._sock.connect(socket)
            else:
                self._where = host
                name, _, port = host.rpartition(':')
                self._sock = socketlib.create_connection((name.strip('[]'), int(port)), timeout)
        except (OSError, ValueError) as e:
            raise QloraConnectionError('cannot connect to qlorad at %s: %s' % (self._where, e)) from None
        self._next_id = 1
        self._pending = collections.defaultdict(collections.deque)
        if host is not None:
            if token is None:
                self.close()
                raise ValueError('a TCP connection needs token=')
            try:
                self.call('auth', token=token)
            except QloraError:
                self.close()
                raise

    def close(self):
        self._sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # The protocol machinery.

    def send(self, op, args=None):
        """Writes one request and returns its id without waiting."""
        request_id = self._next_id
        self._next_id += 1
        request = {'id': request_id, 'op': op}
        if args is not None:
            request['args'] = args
        body = msgpack.packb(request, use_bin_type=True)
        try:
            self._sock.sendall(struct.pack('>I', len(body)) + body)
        except OSError as e:
            raise QloraConnectionError('sending to qlorad at %s: %s' % (self._where, e)) from None
        return request_id

    def wait(self, request_id):
        """The final result of request `request_id` (its events are skipped)."""
        return Stream(self, request_id).wait()

    def call(self, op, **args):
        """One request, its final result returned (None-valued args are left out)."""
        return self.wait(self.send(op, _drop_none(args)))

    def stream(self, op, **args):
        """One streaming request, as a Stream of its events."""
        return Stream(self, self.send(op, _drop_none(args)))

    def _read_exact(self, n):
        chunks = []
        while n > 0:
            try:
                chunk = self._sock.recv(min(n, 1 << 20))
            except OSError as e:
                raise QloraConnectionError('reading from qlorad at %s: %s' % (self._where, e)) from None
            if not chunk:
                raise QloraConnectionError('qlorad at %s closed the connection' % self._where)
            chunks.append(chunk)
            n -= len(chunk)
        return b''.join(chunks)

    def _read_frame(self):
        (n,) = struct.unpack('>I', self._read_exact(4))
        if not 1 <= n <= MAX_FRAME:
            raise QloraConnectionError('qlorad sent a frame of %d bytes' % n)
        try:
            frame = msgpack.unpackb(self._read_exact(n), raw=False, strict_map_key=False)
        except (ValueError, msgpack.UnpackException) as e:
            raise QloraConnectionError('qlorad sent a frame that is not one msgpack object: %s' % e) from None
        if not isinstance(frame, dict) or not isinstance(frame.get('id'), int):
            raise QloraConnectionError('qlorad sent a frame without an integer id')
        return frame

    def _next_frame(self, request_id):
        queue = self._pending.get(request_id)
        if queue:
            return queue.popleft()
        while True:
            frame = self._read_frame()
            if frame['id'] == request_id:
                return frame
            if frame['id'] == 0:  # about the connection itself (bad_frame); it is closed
                error = frame.get('error') or {}
                raise QloraConnectionError('qlorad closed the connection: %s: %s' %
                                           (error.get('code'), error.get('message')))
            self._pending[frame['id']].append(frame)

    @staticmethod
    def _final(frame):
        if frame.get('ok') is True:
            return frame.get('result')
        if frame.get('ok') is False:
            error = frame.get('error') or {}
            raise QloraError(error.get('code'), error.get('message'))
        raise QloraConnectionError("qlorad sent a reply with neither 'event' nor 'ok'")

    # The ops.

    def ping(self):
        return self.call('ping')

    def status(self):
        return self.call('status')

    # special=False: special tokens written in the text are plain text (untrusted text)
    def tokenize(self, text, special=None):
        return self.call('tokenize', text=text, special=special)['tokens']

    def eval(self, tokens=None, text=None, adapter=None, special=None):
        return self.call('eval', tokens=tokens, text=text, adapter=adapter, special=special)

    def generate(self, prompt=None, tokens=None, max_tokens=None, temperature=None, top_p=None,
                 seed=None, adapter=None, stream=False, special=None):
        """The result; with stream=True a Stream of {token, text} events instead."""
        args = dict(prompt=prompt, tokens=tokens, max_tokens=max_tokens, temperature=temperature,
                    top_p=top_p, seed=seed, adapter=adapter, special=special)
        if stream:
            return self.stream('generate', stream=True, **args)
        return self.call('generate', **args)

    def chat(self, messages, max_tokens=None, temperature=None, top_p=None, seed=None, adapter=None,
             stream=False, template=None):
        """A reply to messages ([{'role', 'content'}]), rendered with the model's chat template
        (or the built-in template names) and ended at its end-of-turn token; with
        stream=True a Stream of {token, text} events instead."""
        args = dict(messages=messages, max_tokens=max_tokens, temperature=temperature, top_p=top_p, seed=seed,
                    adapter=adapter, template=template)
        if stream:
            return self.stream('chat', stream=True, **args)
        return self.call('chat', **args)

    def submit(self, adapter, data, eval_data=None, method=None, **hyper):
        """Queues a job; data and eval_data are a local file's path (uploaded first), a file
        id ('file-...'), or a spec: {'file_id': ...}, {'text': ...}, {'tokens': [[...]]} or,
        when qlorad runs with --data-dir, {'path': ...} inside it; hyper holds rank, alpha,
        lr, steps, batch_size, seq_len, ..."""
        return self.call('job.submit', adapter=adapter, data=self._data_spec(data),
                         eval_data=self._data_spec(eval_data), method=method, hyper=hyper or None)

    def _data_spec(self, data):
        if isinstance(data, str) and re.fullmatch('file-[0-9a-f]{64}', data):
            return {'file_id': data}
        if isinstance(data, (str, os.PathLike)):
            return {'file_id': self.upload_file(data)['file_id']}
        return data

    def upload_file(self, path_or_bytes, filename=None, purpose=None):
        """Stores a file (a local path, or bytes) in qlorad: {file_id, bytes, filename,
        created_at, purpose}. The same bytes always get the same id."""
        if isinstance(path_or_bytes, (bytes, bytearray, memoryview)):
            data = bytes(path_or_bytes)
        else:
            with open(path_or_bytes, 'rb') as f:
                data = f.read()
            filename = filename or os.path.basename(os.fspath(path_or_bytes))
        return self.call('file.upload', data=data, filename=filename, purpose=purpose)

    def list_files(self):
        return self.call('file.list')['files']

    def file(self, file_id):
        return self.call('file.get', file_id=file_id)

    def delete_file(self, file_id):
        """Refused (QloraError 'conflict') while a queued or running job uses the file."""
        return self.call('file.delete', file_id=file_id)['deleted']

    def delete_job(self, job_id):
        """Deletes a finished job's record and checkpoint; its files stay."""
        return self.call('job.delete', job_id=job_id)['deleted']

    def job(self, job_id):
        return self.call('job.get', job_id=job_id)

    def history(self, job_id):
        """The job's metric history as its record keeps it: lists step, loss, lr, grad_norm,
        tokens_per_s and eval_step, eval_loss (at most max_points each, thinned evenly)."""
        return self.call('job.history', job_id=job_id)

    def jobs(self, state=None, limit=None, after=None):
        """Every job (in id order), or one page: the first `limit` above job id `after`."""
        return self.call('job.list', state=state, limit=limit, after=after)['jobs']

    def cancel(self, job_id):
        return self.call('job.cancel', job_id=job_id)

    def watch(self, job_id):
        """A Stream of the job's progress, eval, checkpoint and state events; its result is
        the final job record."""
        return self.stream('job.watch', job_id=job_id)

    def adapters(self):
        return self.call('adapter.list')['adapters']

    def adapter(self, name, version=None):
        return self.call('adapter.get', name=name, version=version)

    def delete_adapter(self, name, version=None):
        return self.call('adapter.delete', name=name, version=version)['deleted']

    def activate(self, name, version=None):
        """Sets the default adapter; name=None goes back to the base model."""
        args = {'name': name}
        if version is not None:
            args['version'] = version
        return self.wait(self.send('adapter.activate', args))

    def export_adapter(self, name, version, format='peft'):
        """{file name: str or bytes} of the adapter in PEFT format."""
        return self.call('adapter.export', name=name, version=version, format=format)['files']

    def import_adapter(self, name, files):
        return self.call('adapter.import', name=name, files=files)


def _drop_none(args):
    return {k: v for k, v in args.items() if v is not None}
