#!/usr/bin/python3
"""Writes the fuzzer's seed corpus (tests/fuzz/seeds/): one file per connection, byte 0
the mode (0: Unix client, 1: TCP client that must authenticate), then length-prefixed
msgpack frames, one or a few of each op and a few broken ones. Re-run after adding an op.

usage: make_seeds.py [DIR]"""
import json
import os
import struct
import sys

import msgpack

out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), 'seeds')
os.makedirs(out, exist_ok=True)


def f(op, i=1, **args):
    b = msgpack.packb({'id': i, 'op': op, 'args': args} if args else {'id': i, 'op': op}, use_bin_type=True)
    return struct.pack('>I', len(b)) + b


def st(tensors):
    """A tiny safetensors file of f32 tensors {name: (shape, values)}."""
    header, body = {}, b''
    for name, (shape, vals) in tensors.items():
        data = struct.pack('<%df' % len(vals), *vals)
        header[name] = {'dtype': 'F32', 'shape': shape, 'data_offsets': [len(body), len(body) + len(data)]}
        body += data
    h = json.dumps(header).encode()
    return struct.pack('<Q', len(h)) + h + body


peft_config = json.dumps({'peft_type': 'LORA', 'r': 1, 'lora_alpha': 2, 'target_modules': ['q_proj'],
                          'base_model_name_or_path': 'stories260K'})
peft_model = st({'base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight': ([1, 64], [0.01] * 64),
                 'base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight': ([64, 1], [0.0] * 64)})
hyper = {'steps': 2, 'batch_size': 1, 'seq_len': 16, 'rank': 2, 'alpha': 4, 'eval_every': 0,
         'checkpoint_every': 0, 'warmup': 1}
seeds = {
    'ping': f('ping') + f('status', 2) + f('op.list', 3),
    'tokenize': f('tokenize', text='Once upon a time'),
    'eval_tokens': f('eval', tokens=[[1, 403, 407, 261], [1, 5, 6]], adapter=None),
    'eval_text': f('eval', text='Once upon a time there was a cat.'),
    'generate': f('generate', prompt='Once', max_tokens=4, temperature=0.8, top_p=0.9, seed=3, stream=True),
    'generate_tokens': f('generate', tokens=[1, 403], max_tokens=2),
    'submit': f('job.submit', adapter='a', data={'text': 'Once upon a time there was a cat. ' * 20}, hyper=hyper)
              + f('job.get', 2, job_id=1) + f('job.list', 3, state='queued') + f('job.watch', 4, job_id=1)
              + f('job.cancel', 5, job_id=1),
    'submit_tokens': f('job.submit', adapter='b', data={'tokens': [[1, 2, 3, 4, 5, 6, 7, 8] * 8]},
                       eval_data={'tokens': [[1, 2, 3, 4] * 8]}, method='lora',
                       hyper=dict(hyper, targets=['q', 'v'], schedule='constant')),
    'adapters': f('adapter.list') + f('adapter.get', 2, name='a') + f('adapter.activate', 3, name=None)
                + f('adapter.delete', 4, name='a', version=1) + f('adapter.export', 5, name='a', format='peft'),
    'import': f('adapter.import', name='imp', files={'adapter_config.json': peft_config,
                                                     'adapter_model.safetensors': peft_model})
              + f('eval', 2, tokens=[[1, 2, 3]], adapter='imp'),
    'bad_shapes': f('no.such.op') + f('eval', tokens='x') + f('job.get', job_id=2**63) + f('ping', 9, x=1),
    'chat': f('chat', messages=[{'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Once'}],
              template='chatml', max_tokens=3, stream=True)
            + f('chat', 2, messages=[{'role': 'user', 'content': 'x', 'n': [1, 2.5, None, True]}], template='llama3',
                max_tokens=2)
            + f('chat', 3, messages=[{'role': 'user'}], template='zephyr'),
    'sft_submit': f('job.submit', adapter='s', data={'text': '{"prompt": "Once", "completion": " upon"}\n' * 4},
                    hyper=dict(hyper, epochs=1, steps=0, validation_split=0.25, patience=1, eval_every=1))
                  + f('job.history', 2, job_id=1)
                  + f('job.submit', 3, adapter='m', data={'text': '{"messages": [{"role": "user", "content": "a"}, '
                                                                  '{"role": "assistant", "content": "b"}]}\n'},
                      hyper=dict(hyper, chat_template='chatml')),
    'bad_frame': struct.pack('>I', 3) + b'\x92\x01',
    'files': f('file.upload', data=b'Once upon a time there was a cat. ' * 8, filename='a.txt')
             + f('file.list', 2) + f('file.get', 3, file_id='file-' + '0' * 64)
             + f('job.submit', 4, adapter='f', data={'file_id': 'file-' + '0' * 64}, hyper=hyper)
             + f('job.submit', 5, adapter='p', data={'path': '../etc/passwd'})
             + f('file.delete', 6, file_id='file-' + '0' * 64) + f('job.delete', 7, job_id=1),
}
tcp = {
    'tcp_auth': f('auth', token='fuzz-token-0123456789') + f('ping', 2),
    'tcp_wrong': f('auth', token='wrong') + f('ping', 2),
    'tcp_first_ping': f('ping'),
}
for name, body in seeds.items():
    open(os.path.join(out, name), 'wb').write(b'\x00' + body)
for name, body in tcp.items():
    open(os.path.join(out, name), 'wb').write(b'\x01' + body)
print('%d seeds in %s' % (len(seeds) + len(tcp), out))
