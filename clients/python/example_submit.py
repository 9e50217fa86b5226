#!/usr/bin/python3
"""Submits a LoRA training job to qlorad and prints its progress until it ends.

    clients/python/example_submit.py --socket /tmp/qlorad.sock --adapter shakespeare \
        --data ../shared/data/shakespeare_train.txt --steps 60
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from qlora_client import Client, QloraError  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument('--socket', default=os.environ.get('QLORA_SOCKET', '/tmp/qlorad.sock'))
    ap.add_argument('--adapter', required=True)
    ap.add_argument('--data', required=True, help='a UTF-8 text file to train on')
    ap.add_argument('--method', default='lora', choices=['lora', 'recovery'])
    ap.add_argument('--steps', type=int, default=60)
    ap.add_argument('--batch', type=int, default=4)
    ap.add_argument('--seq-len', type=int, default=128)
    a = ap.parse_args()
    try:
        with Client(socket=a.socket) as c:
            # warm up over the first tenth of the steps (the daemon's default is 10 steps)
            # a local path is uploaded (file.upload) and the job names it by its file id
            job = c.submit(a.adapter, a.data, method=a.method, steps=a.steps,
                           batch_size=a.batch, seq_len=a.seq_len, warmup=max(1, a.steps // 10))
            print('job %d %s' % (job['job_id'], job['state']))
            watch = c.watch(job['job_id'])
            for ev in watch:
                if ev.get('type') == 'progress':
                    print('step %s/%s loss %.4f' % (ev.get('step'), ev.get('total_steps'), ev.get('loss')))
                elif ev.get('type') == 'eval':
                    print('step %s eval_loss %.4f' % (ev.get('step'), ev.get('eval_loss')))
                elif ev.get('type') == 'state':
                    print('state %s' % ev.get('state'))
            rec = watch.result
            print('job %d %s: adapter %s@%s' % (rec['job_id'], rec['state'], rec['adapter'],
                                                rec['adapter_version']))
            return 0 if rec['state'] == 'succeeded' else 1
    except QloraError as e:
        print('qlorad refused: %s: %s' % (e.code, e.message), file=sys.stderr)
        return 1
    except OSError as e:
        print(e, file=sys.stderr)
        return 3


if __name__ == '__main__':
    sys.exit(main())
