import { LabIcon } from '@jupyterlab/ui-components';

const checkpointSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M12 2a10 10 0 1 0 10 10h-2a8 8 0 1 1-8-8V2z"/>
    <path d="M12 6a6 6 0 1 0 6 6h-2a4 4 0 1 1-4-4V6z"/>
    <path d="M15 1l5 4-5 4z"/>
    <circle cx="12" cy="12" r="2"/>
  </g>
</svg>`;

const timelineSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <circle cx="6" cy="4" r="2.5"/>
    <circle cx="6" cy="12" r="2.5"/>
    <circle cx="6" cy="20" r="2.5"/>
    <circle cx="17" cy="16" r="2.5"/>
    <rect x="5.2" y="4" width="1.6" height="16"/>
    <path d="M6 11.2h5a6 6 0 0 1 6 4.8h-1.7A4.4 4.4 0 0 0 11 12.8H6z"/>
  </g>
</svg>`;

const restoreSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <path d="M13 3a9 9 0 0 0-9 9H1l4 4 4-4H6a7 7 0 1 1 2.05 4.95l-1.41 1.41A9 9 0 1 0 13 3z"/>
    <path d="M12 8v5l4.25 2.52.77-1.28-3.52-2.09V8z"/>
  </g>
</svg>`;

export const checkpointIcon = new LabIcon({
  name: 'kernel-checkpoint:checkpoint',
  svgstr: checkpointSvg
});

export const timelineIcon = new LabIcon({
  name: 'kernel-checkpoint:timeline',
  svgstr: timelineSvg
});

export const restoreIcon = new LabIcon({
  name: 'kernel-checkpoint:restore',
  svgstr: restoreSvg
});

/** Two nodes and the arrows between them: compare two checkpoints. */
const compareSvg = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
  <g class="jp-icon3" fill="#616161">
    <circle cx="6" cy="6" r="3"/>
    <circle cx="18" cy="18" r="3"/>
    <path d="M11 5h4a3 3 0 0 1 3 3v5h-2V8a1 1 0 0 0-1-1h-4v2L8 6l3-3z"/>
    <path d="M13 19H9a3 3 0 0 1-3-3v-5h2v5a1 1 0 0 0 1 1h4v-2l3 3-3 3z"/>
  </g>
</svg>`;

export const compareIcon = new LabIcon({
  name: 'kernel-checkpoint:compare',
  svgstr: compareSvg
});
