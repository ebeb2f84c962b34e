import { criuInstallHint, criuInstallHintFor, parseOsRelease } from '../criu-install-hint';

const os = (text: string) => parseOsRelease(text);
const DEBIAN_12 = 'PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"\nID=debian\nVERSION_ID="12"\n';

describe('parseOsRelease', () => {
  it('reads quoted and bare values, ID_LIKE as a list', () => {
    expect(os('ID=linuxmint\nID_LIKE="ubuntu debian"\nVERSION_ID=22\nNAME=\'Mint\'\n')).toEqual({
      id: 'linuxmint',
      idLike: ['ubuntu', 'debian'],
      versionId: '22',
      prettyName: 'Mint'
    });
  });
});

describe('criuInstallHint', () => {
  it('Debian stable: names the too-old versions and where 4.2 is', () => {
    const hint = criuInstallHint(os(DEBIAN_12));
    expect(hint).toMatch(/^On Debian GNU\/Linux 12 \(bookworm\): Debian 12's criu is too old/);
    expect(hint).toContain('apt-get install -t unstable criu');
    expect(hint).toContain('DMTCP');
  });

  it('Debian testing (no VERSION_ID) installs it directly', () => {
    expect(criuInstallHint(os('ID=debian\nPRETTY_NAME="Debian forky/sid"\n'))).toContain(
      'testing and unstable ship CRIU 4.2: `sudo apt-get install criu`'
    );
  });

  it('Ubuntu and its derivatives: the PPA', () => {
    for (const text of ['ID=ubuntu\nVERSION_ID="24.04"\n', 'ID=pop\nID_LIKE="ubuntu debian"\n']) {
      expect(criuInstallHint(os(text))).toContain('ppa:criu/ppa');
    }
  });

  it.each([
    ['ID=fedora\nVERSION_ID=43\n', 'dnf install criu'],
    ['ID="rocky"\nID_LIKE="rhel centos fedora"\n', 'dnf install criu'],
    ['ID=arch\n', 'pacman -S criu'],
    ['ID="opensuse-tumbleweed"\nID_LIKE="opensuse suse"\n', 'zypper install criu']
  ])('%j: %s', (text, command) => {
    const hint = criuInstallHint(os(text));
    expect(hint).toContain(command);
    expect(hint).toContain('criu --version');
  });

  it('elsewhere, or without os-release: from source, or DMTCP', () => {
    expect(criuInstallHint(os('ID=gentoo\n'))).toMatch(/^Build CRIU from source .* DMTCP/);
    expect(criuInstallHint(null)).toMatch(/^Build CRIU from source/);
  });
});

describe('criuInstallHintFor (doctor)', () => {
  const debian = os(DEBIAN_12);
  const hint = (ok: boolean, version?: string) =>
    criuInstallHintFor(
      [
        { name: 'dmtcp', ok: false },
        { name: 'criu', ok, version }
      ],
      debian
    );

  it.each([[undefined], ['4.1.1'], ['3.17.1'], ['unknown']])(
    'hints when CRIU is missing or older than 4.2 (version %s)',
    version => {
      expect(hint(false, version)).toContain("Debian 12's criu is too old");
    }
  );

  it.each([
    [true, '4.2.1'],
    [false, '4.2.1'],
    [false, '5.0']
  ])('not when CRIU works, or is recent but lacks privileges (ok %s, %s)', (ok, version) => {
    expect(hint(ok, version)).toBeUndefined();
  });
});
