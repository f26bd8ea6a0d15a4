/**
 * The panel's state: the catalog tree as far as it was opened, the datasets with their live
 * state, and the running jobs. Views re-render on `changed`; datasets are polled while the
 * panel is visible (every second while something materializes, else every few seconds).
 */
import { Signal } from '@lumino/signaling';

import {
  api,
  ApiError,
  IColumns,
  IDataset,
  IJob,
  ISource,
  IStatus,
  ITable
} from './api';

const FAST_POLL_MS = 1000;
const SLOW_POLL_MS = 4000;

/** What a catalog node holds once opened: its children, or why they could not be read. */
export interface ILoad<T> {
  loading: boolean;
  value: T | null;
  error: string;
}

export type Message = { text: string; error: boolean };

export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    return `${error.kind}: ${error.message}`;
  }
  return String((error as Error)?.message ?? error);
}

export class PanelModel {
  readonly changed = new Signal<this, void>(this);
  status: IStatus | null = null;
  statusError = '';
  sources: ILoad<ISource[]> = { loading: false, value: null, error: '' };
  schemas = new Map<string, ILoad<string[]>>();
  tables = new Map<string, ILoad<ITable[]>>();
  columns = new Map<string, ILoad<IColumns>>();
  expanded = new Set<string>();
  datasets: IDataset[] = [];
  jobs: IJob[] = [];
  datasetsError = '';
  filter = '';
  selected: string | null = null;
  message: Message | null = null;
  private _seenJobs = new Map<number, string>();
  private _timer: number | null = null;
  private _visible = false;
  private _started = false;

  /** Called with every finished job once (the panel turns it into a notification). */
  onJobFinished: (job: IJob) => void = () => undefined;

  private _emit(): void {
    this.changed.emit();
  }

  say(text: string, error = false): void {
    this.message = { text, error };
    this._emit();
  }

  setFilter(text: string): void {
    this.filter = text;
    this._emit();
  }

  select(ref: string | null): void {
    this.selected = ref;
    this._emit();
  }

  selectedDataset(): IDataset | null {
    return this.datasets.find(d => d.ref === this.selected) ?? null;
  }

  // -- visibility and polling ------------------------------------------------------------------
  setVisible(visible: boolean): void {
    this._visible = visible;
    if (visible) {
      if (!this._started) {
        this._started = true;
        void this.reload();
      } else {
        this._schedule(0);
      }
    } else if (this._timer !== null) {
      window.clearTimeout(this._timer);
      this._timer = null;
    }
  }

  private _busy(): boolean {
    return (
      this.jobs.some(j => j.state === 'running') ||
      this.datasets.some(d => d.state === 'materializing')
    );
  }

  private _schedule(delay?: number): void {
    if (this._timer !== null) {
      window.clearTimeout(this._timer);
    }
    this._timer = null;
    if (!this._visible) {
      return;
    }
    const wait = delay ?? (this._busy() ? FAST_POLL_MS : SLOW_POLL_MS);
    this._timer = window.setTimeout(() => {
      this._timer = null;
      void this.refreshDatasets();
    }, wait);
  }

  // -- loading ---------------------------------------------------------------------------------
  async reload(): Promise<void> {
    this.schemas.clear();
    this.tables.clear();
    this.columns.clear();
    try {
      this.status = await api.status();
      this.statusError = '';
    } catch (error) {
      this.status = null;
      this.statusError = describeError(error);
    }
    this._emit();
    await Promise.all([this.loadSources(), this.refreshDatasets()]);
    for (const key of Array.from(this.expanded)) {
      await this._load(key);
    }
  }

  async loadSources(): Promise<void> {
    this.sources = { loading: true, value: this.sources.value, error: '' };
    this._emit();
    try {
      this.sources = { loading: false, value: await api.sources(), error: '' };
    } catch (error) {
      this.sources = { loading: false, value: null, error: describeError(error) };
    }
    this._emit();
  }

  async refreshDatasets(): Promise<void> {
    try {
      const answer = await api.datasets();
      this.datasets = answer.datasets;
      this.jobs = answer.jobs;
      this.datasetsError = '';
      for (const job of answer.jobs) {
        if (job.state !== 'running' && this._seenJobs.get(job.id) !== job.state) {
          this._seenJobs.set(job.id, job.state);
          this.onJobFinished(job);
        } else if (job.state === 'running') {
          this._seenJobs.set(job.id, job.state);
        }
      }
    } catch (error) {
      this.datasetsError = describeError(error);
    }
    this._emit();
    this._schedule();
  }

  /** Keys of catalog nodes: "s:SOURCE", "d:SOURCE\u0000SCHEMA", "t:SOURCE\u0000SCHEMA\u0000TABLE". */
  static key(kind: 's' | 'd' | 't', ...parts: string[]): string {
    return `${kind}:${parts.join('\u0000')}`;
  }

  async toggle(key: string): Promise<void> {
    if (this.expanded.has(key)) {
      this.expanded.delete(key);
      this._emit();
      return;
    }
    this.expanded.add(key);
    this._emit();
    await this._load(key);
  }

  private async _load(key: string): Promise<void> {
    const [kind, rest] = [key[0], key.slice(2)];
    const parts = rest.split('\u0000');
    const store: Map<string, ILoad<any>> =
      kind === 's' ? this.schemas : kind === 'd' ? this.tables : this.columns;
    const current = store.get(key);
    if (current && (current.loading || current.value)) {
      return;
    }
    store.set(key, { loading: true, value: null, error: '' });
    this._emit();
    try {
      const value =
        kind === 's'
          ? await api.schemas(parts[0])
          : kind === 'd'
            ? await api.tables(parts[0], parts[1])
            : await api.columns(parts[0], parts[1], parts[2]);
      store.set(key, { loading: false, value, error: '' });
    } catch (error) {
      store.set(key, { loading: false, value: null, error: describeError(error) });
    }
    this._emit();
  }

  // -- changes ---------------------------------------------------------------------------------
  async map(name: string, source: string, schema: string, table: string): Promise<boolean> {
    try {
      const answer = await api.map(name, source, schema, table);
      this.selected = answer.name;
      this.say(`mapped ${answer.ref} as ${answer.name} (no rows moved)`);
      await this.refreshDatasets();
      return true;
    } catch (error) {
      this.say(`map: ${describeError(error)}`, true);
      return false;
    }
  }

  async act(
    action: string,
    dataset: IDataset,
    args: Record<string, string> = {}
  ): Promise<void> {
    try {
      const answer = await api.action(
        action,
        dataset.name,
        dataset.mine ? null : dataset.owner,
        args
      );
      if (answer.job) {
        this._seenJobs.set(answer.job.id, 'running');
        this.say(`${action} ${dataset.ref}: started`);
      } else if (answer.shared_with) {
        this.say(`${dataset.ref} is shared with ${answer.shared_with.join(', ') || 'nobody'}`);
      } else {
        this.say(`${dataset.ref} is ${answer.state}`);
      }
    } catch (error) {
      this.say(`${action} ${dataset.ref}: ${describeError(error)}`, true);
    }
    await this.refreshDatasets();
  }
}
