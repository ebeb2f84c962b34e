/**
 * The extension's settings (schema/plugin.json) as a typed object.
 */
import type { ISettingRegistry } from '@jupyterlab/settingregistry';
import type { ReadonlyPartialJSONObject } from '@lumino/coreutils';

export type AutoCheckpointMode = 'off' | 'interval' | 'long-cell';

export interface IAutoCheckpoint {
  mode: AutoCheckpointMode;
  /** interval: minutes between automatic checkpoints. */
  minutes: number;
  /** long-cell: checkpoint after a cell that ran at least this many seconds. */
  seconds: number;
}

export interface ICheckpointSettings {
  labelFormat: string;
  confirmRestore: boolean;
  openPanelOnStart: boolean;
  autoCheckpoint: IAutoCheckpoint;
}

export const DEFAULT_SETTINGS: ICheckpointSettings = {
  labelFormat: '{notebook} {time} [{count}]',
  confirmRestore: true,
  openPanelOnStart: false,
  autoCheckpoint: { mode: 'off', minutes: 30, seconds: 120 }
};

/** Read settings from a composite object, falling back to defaults field by field. */
export function readSettings(
  composite: ReadonlyPartialJSONObject | undefined
): ICheckpointSettings {
  const c = (composite ?? {}) as Partial<Record<keyof ICheckpointSettings, unknown>>;
  const auto = (c.autoCheckpoint ?? {}) as Partial<Record<keyof IAutoCheckpoint, unknown>>;
  const mode: AutoCheckpointMode =
    auto.mode === 'interval' || auto.mode === 'long-cell' ? auto.mode : 'off';
  const positive = (v: unknown, d: number) => (typeof v === 'number' && v > 0 ? v : d);
  return {
    labelFormat: typeof c.labelFormat === 'string' ? c.labelFormat : DEFAULT_SETTINGS.labelFormat,
    confirmRestore:
      typeof c.confirmRestore === 'boolean' ? c.confirmRestore : DEFAULT_SETTINGS.confirmRestore,
    openPanelOnStart:
      typeof c.openPanelOnStart === 'boolean'
        ? c.openPanelOnStart
        : DEFAULT_SETTINGS.openPanelOnStart,
    autoCheckpoint: {
      mode,
      minutes: positive(auto.minutes, DEFAULT_SETTINGS.autoCheckpoint.minutes),
      seconds: positive(auto.seconds, DEFAULT_SETTINGS.autoCheckpoint.seconds)
    }
  };
}

/** Load the plugin's settings from the registry and call `apply` with them now and on every
 * change; a registry that fails leaves the defaults, and says why on the console. */
export function followSettings(
  registry: ISettingRegistry,
  pluginId: string,
  apply: (settings: ICheckpointSettings) => void
): void {
  registry
    .load(pluginId)
    .then(settings => {
      const read = () => apply(readSettings(settings.composite));
      read();
      settings.changed.connect(read);
    })
    .catch(reason => {
      console.error('jupyterlab-kernel-checkpoint: could not load settings', reason);
    });
}
