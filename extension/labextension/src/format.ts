/** Numbers and states as the notebook displays of ldw show them. */
import { IDataset, IProgress, ITable } from './api';

export function formatCount(n: number | null | undefined): string {
  return n === null || n === undefined ? '—' : n.toLocaleString('en-US');
}

export function formatBytes(n: number | null | undefined): string {
  if (n === null || n === undefined) {
    return '—';
  }
  const units: [string, number][] = [
    ['GB', 1e9],
    ['MB', 1e6],
    ['kB', 1e3]
  ];
  for (const [unit, scale] of units) {
    if (Math.abs(n) >= scale) {
      return `${(n / scale).toFixed(1)} ${unit}`;
    }
  }
  return `${Math.trunc(n)} B`;
}

export function formatProgress(p: IProgress): string {
  return (
    `${formatCount(p.rows)} rows · ${formatBytes(p.bytes)} · ` +
    `${p.mb_per_s.toFixed(1)} MB/s · ${p.seconds.toFixed(1)} s`
  );
}

/** What a table row says about its size: an estimate, or why there is none. */
export function tableRows(table: ITable): { text: string; title: string } {
  if (table.rows !== null) {
    return {
      text: `~${formatCount(table.rows)} rows`,
      title: "the source's estimate from its statistics"
    };
  }
  if (table.kind === 'view') {
    return { text: 'view', title: 'a view: the source keeps no row count for it' };
  }
  return {
    text: 'rows not estimated',
    title:
      'the source has no row estimate for this table (e.g. never analyzed), ' +
      'or your policy filters its rows'
  };
}

/** The label of one policy tag of a column (as `describe` reports them). */
export function tagLabel(tag: string): string {
  if (tag.startsWith('mask:')) {
    return `masked (${tag.slice(5)})`;
  }
  const labels: Record<string, string> = {
    row_filter: 'filtered',
    memory_only: 'memory-only',
    'export:deny': 'no export'
  };
  return labels[tag] ?? tag;
}

export function tagClass(tag: string): string {
  if (tag === 'denied') {
    return 'ldw-tag-denied';
  }
  if (tag === 'masked' || tag.startsWith('mask:')) {
    return 'ldw-tag-masked';
  }
  if (tag === 'row_filter') {
    return 'ldw-tag-filtered';
  }
  return 'ldw-tag-other';
}

/** A short summary line of a dataset: rows, size, hits, owner, sharing. */
export function datasetSummary(d: IDataset): string {
  const parts: string[] = [];
  if (d.rows !== null) {
    parts.push(`${formatCount(d.rows)} rows`);
  }
  if (d.bytes !== null) {
    parts.push(formatBytes(d.bytes));
  }
  parts.push(`${formatCount(d.hits)} hit${d.hits === 1 ? '' : 's'}`);
  parts.push(`owner ${d.owner}`);
  if (d.shared_with.length) {
    parts.push(`shared with ${d.shared_with.join(', ')}`);
  }
  return parts.join(' · ');
}

/** A Python identifier for a variable bound to `name` (as ldw suggests names). */
export function variableName(name: string): string {
  let out = name.toLowerCase().replace(/[^a-z0-9_]/g, '_');
  if (!out || /^[0-9]/.test(out)) {
    out = `t_${out}`;
  }
  return out;
}
