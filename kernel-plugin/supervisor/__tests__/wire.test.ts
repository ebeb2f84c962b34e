import {
  decode,
  DELIMITER,
  encode,
  endpoint,
  joinFrames,
  newMessage,
  passFrames,
  peekString,
  Signer,
  splitFrames,
  stringField,
  type ConnectionInfo
} from '../wire';

const signer = new Signer('secret-key');

describe('wire protocol', () => {
  it('round-trips a message with identities and binary buffers', () => {
    const message = newMessage('comm_msg', { comm_id: 'c', data: { x: 1 } }, { session: 's' });
    message.buffers = [Buffer.from([0, 1, 2, 255])];
    const frames = encode(message, signer, [Buffer.from('client-1')]);
    expect(frames[0].toString()).toBe('client-1');
    expect(frames[1].equals(DELIMITER)).toBe(true);
    const { identities, message: back } = decode(frames, signer);
    expect(identities.map(String)).toEqual(['client-1']);
    expect(back.content).toEqual({ comm_id: 'c', data: { x: 1 } });
    expect(back.buffers[0].equals(Buffer.from([0, 1, 2, 255]))).toBe(true);
  });

  it('signs header, parent, metadata and content only, never the buffers', () => {
    const message = newMessage('display_data', { data: {} }, { session: 's' });
    message.buffers = [Buffer.from('a widget buffer')];
    const frames = encode(message, signer);
    const changedBuffer = [...frames.slice(0, -1), Buffer.from('another buffer')];
    expect(() => decode(changedBuffer, signer)).not.toThrow();
    const changedContent = [...frames];
    changedContent[5] = Buffer.from('{"data":{"tampered":true}}');
    expect(() => decode(changedContent, signer)).toThrow('bad message signature');
  });

  it('re-signs raw frames for another key without touching their bytes', () => {
    const frames = encode(newMessage('execute_request', { code: '1' }, { session: 's' }), signer, [
      Buffer.from('id')
    ]);
    const other = new Signer('kernel-key');
    const split = splitFrames(frames)!;
    const resigned = joinFrames(split, other);
    expect(() => decode(resigned, signer)).toThrow('bad message signature');
    expect(decode(resigned, other).message.content).toEqual({ code: '1' });
    expect(resigned.slice(3).every((frame, i) => frame.equals(frames[3 + i]))).toBe(true);
  });

  it('passes frames on with their own signature where the key is the same', () => {
    const frames = encode(
      newMessage('status', { execution_state: 'idle' }, { session: 's' }),
      signer
    );
    const passed = passFrames(splitFrames(frames)!);
    expect(passed.every((frame, i) => frame.equals(frames[i]))).toBe(true);
    expect(() => decode(passed, new Signer('secret-key'))).not.toThrow();
    expect(new Signer('secret-key').signsLike(signer)).toBe(true);
    expect(new Signer('kernel-key').signsLike(signer)).toBe(false);
    expect(new Signer('secret-key', 'hmac-sha512').signsLike(signer)).toBe(false);
  });

  it('rejects frames without a delimiter', () => {
    expect(splitFrames([Buffer.from('a'), Buffer.from('b')])).toBeNull();
  });

  it('forms tcp and ipc endpoints as Jupyter does', () => {
    const info = { transport: 'tcp', ip: '127.0.0.1', shell_port: 5555 } as ConnectionInfo;
    expect(endpoint(info, 'shell')).toBe('tcp://127.0.0.1:5555');
    expect(endpoint({ ...info, transport: 'ipc', ip: '/run/k' }, 'shell')).toBe(
      'ipc:///run/k-5555'
    );
  });

  it('does not sign with an empty key, as Jupyter', () => {
    const unsigned = new Signer('');
    const frames = encode(newMessage('status', {}, { session: 's' }), unsigned);
    expect(frames[1].length).toBe(0); // [<IDS|MSG>, signature, ...]
    expect(() => decode(frames, unsigned)).not.toThrow();
  });

  describe('peeking at a field without parsing', () => {
    const bytes = (value: unknown) => Buffer.from(JSON.stringify(value));

    it('reads a string field as JSON.parse would, in compact or spaced JSON', () => {
      const header = {
        msg_id: 'a1',
        msg_type: 'execute_request',
        session: 's',
        username: 'ü-ser',
        date: '2026-11-26T00:00:00Z',
        version: '5.4'
      };
      expect(peekString(bytes(header), 'msg_type')).toBe('execute_request');
      expect(peekString(bytes(header), 'username')).toBe('ü-ser');
      // Python's json.dumps puts a space after each colon.
      const spaced = Buffer.from('{"msg_id" :  "a1", "msg_type": "status"}');
      expect(peekString(spaced, 'msg_type')).toBe('status');
      expect(peekString(spaced, 'msg_id')).toBe('a1');
    });

    it('takes a key, never a value that looks like one', () => {
      const tricky = bytes({ msg_type: 'msg_id', note: 'say "msg_id": "no"', msg_id: 'yes' });
      expect(peekString(tricky, 'msg_id')).toBe('yes');
    });

    it('gives up on what it cannot read plainly; stringField then parses', () => {
      const escaped = bytes({ msg_id: 'a"b\\c' });
      expect(peekString(escaped, 'msg_id')).toBeNull();
      expect(stringField(escaped, 'msg_id')).toBe('a"b\\c');
      expect(peekString(bytes({ count: 3 }), 'count')).toBeNull();
      expect(stringField(bytes({ count: 3 }), 'count')).toBeNull();
      expect(peekString(bytes({}), 'msg_id')).toBeNull();
      expect(stringField(bytes({}), 'msg_id')).toBeNull();
      expect(() => stringField(Buffer.from('{"msg_id": 1'), 'msg_id')).toThrow();
    });
  });
});
