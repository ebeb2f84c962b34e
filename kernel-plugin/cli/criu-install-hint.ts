// Where to get CRIU >= 4.2 on the user's Linux distribution (from /etc/os-release), for
// `kernel-checkpoint doctor`. Only Debian's versions are named (checked December 2026, see
// docs/install.md); elsewhere the hint says to check `criu --version`. Every hint ends with the
// ways that work anywhere: CRIU from source, or DMTCP.

import { readFileSync } from 'node:fs';

import { MINIMUM_CRIU_VERSION } from '../engines/criu';
import type { EngineProbe } from '../engines/engine';

export interface OsRelease {
  id: string;
  idLike: string[];
  versionId: string;
  prettyName: string;
}

/** Parses os-release(5): KEY=value lines, values optionally quoted. */
export function parseOsRelease(text: string): OsRelease {
  const fields = new Map<string, string>();
  for (const line of text.split('\n')) {
    const match = /^([A-Z_]+)=(.*)$/.exec(line.trim());
    if (match) {
      fields.set(match[1], match[2].replace(/^(["'])(.*)\1$/, '$2'));
    }
  }
  return {
    id: (fields.get('ID') ?? '').toLowerCase(),
    idLike: (fields.get('ID_LIKE') ?? '').toLowerCase().split(/\s+/).filter(Boolean),
    versionId: fields.get('VERSION_ID') ?? '',
    prettyName: fields.get('PRETTY_NAME') ?? fields.get('NAME') ?? ''
  };
}

/** /etc/os-release (else /usr/lib/os-release), or null when neither can be read. */
export function readOsRelease(): OsRelease | null {
  for (const file of ['/etc/os-release', '/usr/lib/os-release']) {
    try {
      return parseOsRelease(readFileSync(file, 'utf8'));
    } catch {
      // try the next one
    }
  }
  return null;
}

const ANYWHERE =
  'build CRIU from source (https://criu.org/Installation), or use DMTCP instead, which needs ' +
  'no root (build https://github.com/dmtcp/dmtcp, put its bin on PATH or set DMTCP_ROOT)';

function forDistribution(os: OsRelease): string | null {
  const family = [os.id, ...os.idLike];
  const check = 'then check that `criu --version` says 4.2 or newer';
  if (os.id === 'ubuntu' || (family.includes('ubuntu') && os.id !== 'debian')) {
    return (
      `\`sudo apt-get install criu\`, ${check}; else CRIU's PPA has current releases: ` +
      '`sudo add-apt-repository ppa:criu/ppa && sudo apt-get install criu`'
    );
  }
  if (family.includes('debian')) {
    if (os.versionId === '') {
      return 'Debian testing and unstable ship CRIU 4.2: `sudo apt-get install criu`';
    }
    return (
      `Debian ${os.versionId}'s criu is too old (12 ships 3.17, 13 ships 4.1); Debian testing and ` +
      'unstable ship 4.2 (`sudo apt-get install -t unstable criu`, with unstable in your apt sources)'
    );
  }
  if (family.includes('fedora') || family.includes('rhel') || family.includes('centos')) {
    return `\`sudo dnf install criu\`, ${check}`;
  }
  if (family.includes('arch')) {
    return `\`sudo pacman -S criu\`, ${check}`;
  }
  if (family.some(name => name.startsWith('opensuse') || name === 'suse')) {
    return `\`sudo zypper install criu\`, ${check}`;
  }
  return null;
}

/** One sentence: how to get CRIU >= 4.2 here, then the ways that work anywhere. */
export function criuInstallHint(os: OsRelease | null = readOsRelease()): string {
  const specific = os ? forDistribution(os) : null;
  const ways = specific ? `${specific}; or ${ANYWHERE}` : ANYWHERE;
  return os?.prettyName
    ? `On ${os.prettyName}: ${ways}.`
    : `${ways[0].toUpperCase()}${ways.slice(1)}.`;
}

/** The hint when the criu probe found CRIU missing or too old (not merely unprivileged). */
export function criuInstallHintFor(
  probes: EngineProbe[],
  os: OsRelease | null = readOsRelease()
): string | undefined {
  const criu = probes.find(probe => probe.name === 'criu');
  if (!criu || criu.ok) {
    return undefined;
  }
  const [major = 0, minor = 0] = (criu.version ?? '').split('.').map(Number);
  const [needMajor, needMinor] = MINIMUM_CRIU_VERSION;
  // (Written so that an unreadable version, NaN, counts as too old.)
  const recentEnough = major > needMajor || (major === needMajor && minor >= needMinor);
  return recentEnough ? undefined : criuInstallHint(os);
}
