/**
 * The left sidebar "ldw": datasets with live state and actions, and the catalog tree
 * sources -> schemas -> tables -> columns with policy tags. Every control is a button or an
 * input (keyboard reachable, labelled); colours come from JupyterLab's theme variables.
 */
import { ReactWidget, UseSignal } from '@jupyterlab/apputils';
import { LabIcon, refreshIcon, searchIcon } from '@jupyterlab/ui-components';
import { MimeData } from '@lumino/coreutils';
import { Drag } from '@lumino/dragdrop';
import { Message as LuminoMessage } from '@lumino/messaging';
import * as React from 'react';

import { IColumns, IDataset, ITable } from './api';
import {
  datasetSummary,
  formatProgress,
  tableRows,
  tagClass,
  tagLabel
} from './format';
import { PanelModel } from './model';

export const CELL_MIME = 'application/vnd.jupyter.cells';

const ICON_SVG = `<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 24 24">
<g class="jp-icon3" fill="#616161"><ellipse cx="12" cy="5" rx="8" ry="3"/>
<path d="M4 7v4c0 1.7 3.6 3 8 3s8-1.3 8-3V7c0 1.7-3.6 3-8 3S4 8.7 4 7z"/>
<path d="M4 13v4c0 1.7 3.6 3 8 3s8-1.3 8-3v-4c0 1.7-3.6 3-8 3s-8-1.3-8-3z"/></g></svg>`;

export const ldwIcon = new LabIcon({ name: 'ldw:panel', svgstr: ICON_SVG });

/** What the sidebar asks of the application (dialogs, notebooks, the main area). */
export interface IPanelHost {
  preview(source: string, schema: string, table: ITable): void;
  mapTable(source: string, schema: string, table: ITable): Promise<void>;
  share(dataset: IDataset): Promise<void>;
  exportDataset(dataset: IDataset): Promise<void>;
  cellsFor(what: { table?: ITable; dataset?: IDataset }): any[];
  insert(cells: any[]): void;
}

const DATASET_ACTIONS: { action: string; label: string; mineOnly: boolean }[] = [
  { action: 'cache', label: 'Cache', mineOnly: true },
  { action: 'refresh', label: 'Refresh', mineOnly: true },
  { action: 'evict', label: 'Evict', mineOnly: true },
  { action: 'pin', label: 'Pin', mineOnly: true },
  { action: 'share', label: 'Share…', mineOnly: true },
  { action: 'export', label: 'Export…', mineOnly: false }
];

/** Start a Lumino drag carrying notebook cells: a notebook inserts them where dropped. */
function dragCells(
  event: React.MouseEvent,
  cells: () => any[],
  label: string,
  source: unknown
): void {
  if (event.button !== 0) {
    return;
  }
  const startX = event.clientX;
  const startY = event.clientY;
  const move = (e: MouseEvent) => {
    if (Math.abs(e.clientX - startX) + Math.abs(e.clientY - startY) < 6) {
      return;
    }
    cleanup();
    const mimeData = new MimeData();
    mimeData.setData(CELL_MIME, cells());
    const image = document.createElement('div');
    image.className = 'ldw-DragImage';
    image.textContent = label;
    const drag = new Drag({
      mimeData,
      dragImage: image,
      proposedAction: 'copy',
      supportedActions: 'copy',
      source
    });
    void drag.start(e.clientX, e.clientY);
  };
  const cleanup = () => {
    document.removeEventListener('mousemove', move, true);
    document.removeEventListener('mouseup', cleanup, true);
  };
  document.addEventListener('mousemove', move, true);
  document.addEventListener('mouseup', cleanup, true);
}

function Badge(props: { text: string; kind: string; title?: string }): JSX.Element {
  return (
    <span className={`ldw-badge ldw-badge-${props.kind}`} title={props.title}>
      {props.text}
    </span>
  );
}

function Tags(props: { tags: string[] }): JSX.Element | null {
  if (!props.tags.length) {
    return null;
  }
  return (
    <span className="ldw-tags">
      {props.tags.map(tag => (
        <span key={tag} className={`ldw-tag ${tagClass(tag)}`} data-tag={tag}>
          {tagLabel(tag)}
        </span>
      ))}
    </span>
  );
}

function Toggle(props: {
  open: boolean;
  label: string;
  onToggle: () => void;
  children?: React.ReactNode;
  className?: string;
}): JSX.Element {
  return (
    <button
      className={`ldw-node ${props.className ?? ''}`}
      aria-expanded={props.open}
      onClick={props.onToggle}
      title={props.label}
    >
      <span className="ldw-caret" aria-hidden="true">
        {props.open ? '▾' : '▸'}
      </span>
      {props.children}
    </button>
  );
}

function DatasetRow(props: {
  model: PanelModel;
  host: IPanelHost;
  dataset: IDataset;
  widget: unknown;
}): JSX.Element {
  const { model, host, dataset, widget } = props;
  const selected = model.selected === dataset.ref;
  const materializing = dataset.state === 'materializing' || dataset.job !== null;
  const run = (action: string) => {
    model.select(dataset.ref);
    if (action === 'share') {
      void host.share(dataset);
    } else if (action === 'export') {
      void host.exportDataset(dataset);
    } else if (action === 'pin') {
      void model.act(dataset.pinned ? 'unpin' : 'pin', dataset);
    } else {
      void model.act(action, dataset);
    }
  };
  return (
    <li
      className={`ldw-dataset${selected ? ' ldw-selected' : ''}`}
      data-dataset={dataset.ref}
      data-state={dataset.state}
    >
      <div
        className="ldw-dataset-head"
        onMouseDown={e =>
          dragCells(e, () => host.cellsFor({ dataset }), dataset.ref, widget)
        }
      >
        <button
          className="ldw-dataset-name"
          onClick={() => model.select(selected ? null : dataset.ref)}
          aria-pressed={selected}
          title={`${dataset.ref}: ${dataset.mapping} (drag into a notebook for a cell)`}
        >
          {dataset.ref}
        </button>
        <Badge text={dataset.state} kind={dataset.state} title="state" />
        {dataset.stale && (
          <Badge
            text="stale"
            kind="stale"
            title={dataset.stale_reason || 'the source changed since this version'}
          />
        )}
        {dataset.pinned && <Badge text="pinned" kind="flag" />}
        {dataset.memory_only && <Badge text="memory-only" kind="flag" />}
        {dataset.denied && <Badge text="denied" kind="denied" />}
      </div>
      <div className="ldw-meta">{dataset.mapping}</div>
      <div className="ldw-meta ldw-summary">{datasetSummary(dataset)}</div>
      {materializing && (
        <div className="ldw-progress" role="status">
          <progress
            value={dataset.progress?.done ? 1 : undefined}
            max={dataset.progress?.done ? 1 : undefined}
          />
          <span className="ldw-progress-text">
            {dataset.progress
              ? `${dataset.job?.action ?? 'caching'}: ${formatProgress(dataset.progress)}`
              : `${dataset.job?.action ?? 'materializing'}…`}
          </span>
        </div>
      )}
      {dataset.error && <div className="ldw-error">{dataset.error}</div>}
      <div className="ldw-actions" role="toolbar" aria-label={`actions on ${dataset.ref}`}>
        {DATASET_ACTIONS.filter(a => dataset.mine || !a.mineOnly).map(a => (
          <button
            key={a.action}
            className="ldw-action"
            data-action={a.action}
            disabled={a.action !== 'export' && dataset.job !== null}
            onClick={() => run(a.action)}
          >
            {a.action === 'pin' && dataset.pinned ? 'Unpin' : a.label}
          </button>
        ))}
        <button
          className="ldw-action"
          data-action="insert"
          title="insert a cell for this dataset into the active notebook"
          onClick={() => host.insert(host.cellsFor({ dataset }))}
        >
          Insert
        </button>
      </div>
    </li>
  );
}

function Datasets(props: {
  model: PanelModel;
  host: IPanelHost;
  widget: unknown;
}): JSX.Element {
  const { model } = props;
  const filter = model.filter.toLowerCase();
  const shown = model.datasets.filter(
    d =>
      !filter ||
      d.ref.toLowerCase().includes(filter) ||
      d.mapping.toLowerCase().includes(filter)
  );
  return (
    <section className="ldw-section" aria-label="datasets">
      <h3 className="ldw-section-title">Datasets</h3>
      {model.datasetsError && <div className="ldw-error">{model.datasetsError}</div>}
      {!model.datasetsError && model.datasets.length === 0 && (
        <div className="ldw-empty">
          No datasets yet: map a table below (or drag it into a notebook).
        </div>
      )}
      <ul className="ldw-datasets">
        {shown.map(d => (
          <DatasetRow key={d.ref} dataset={d} {...props} />
        ))}
      </ul>
    </section>
  );
}

function ColumnsView(props: { load: IColumns }): JSX.Element {
  const { load } = props;
  if (load.denied) {
    return <div className="ldw-error ldw-denied">denied: {load.message}</div>;
  }
  return (
    <ul className="ldw-columns">
      {load.columns.map(c => (
        <li key={c.name} className="ldw-column" data-column={c.name}>
          <span className="ldw-column-name">{c.name}</span>
          <span
            className="ldw-column-type"
            title={`${c.source_type}${c.nullable ? '' : ' not null'}${c.note ? ` (${c.note})` : ''}`}
          >
            {c.arrow_type}
          </span>
          <Tags tags={c.tags} />
        </li>
      ))}
    </ul>
  );
}

function TableNode(props: {
  model: PanelModel;
  host: IPanelHost;
  source: string;
  schema: string;
  table: ITable;
  widget: unknown;
}): JSX.Element {
  const { model, host, source, schema, table, widget } = props;
  const key = PanelModel.key('t', source, schema, table.table);
  const open = model.expanded.has(key);
  const load = model.columns.get(key);
  const rows = tableRows(table);
  const tags = load?.value ? (load.value.denied ? ['denied'] : load.value.tags) : [];
  return (
    <li className={`ldw-table${open ? ' ldw-open' : ''}`} data-table={table.ref ?? table.table}>
      <div
        className="ldw-row"
        onMouseDown={e =>
          table.ref && dragCells(e, () => host.cellsFor({ table }), table.ref, widget)
        }
      >
        <Toggle
          open={open}
          label={`${table.ref ?? table.table} (drag into a notebook for a %ldw map cell)`}
          onToggle={() => void model.toggle(key)}
        >
          <span className="ldw-name">{table.table}</span>
        </Toggle>
        <span className="ldw-rows" title={rows.title}>
          {rows.text}
        </span>
        <Tags tags={tags} />
        <span className="ldw-row-actions">
          <button
            className="ldw-action"
            data-action="preview"
            disabled={!table.ref}
            onClick={() => host.preview(source, schema, table)}
          >
            Preview
          </button>
          <button
            className="ldw-action"
            data-action="map"
            disabled={!table.ref}
            onClick={() => void host.mapTable(source, schema, table)}
          >
            Map…
          </button>
          <button
            className="ldw-action"
            data-action="insert"
            disabled={!table.ref}
            title="insert a %ldw map cell into the active notebook"
            onClick={() => host.insert(host.cellsFor({ table }))}
          >
            Insert
          </button>
        </span>
      </div>
      {open && load?.loading && <div className="ldw-empty">reading columns…</div>}
      {open && load?.error && <div className="ldw-error">{load.error}</div>}
      {open && load?.value && <ColumnsView load={load.value} />}
    </li>
  );
}

function SchemaNode(props: {
  model: PanelModel;
  host: IPanelHost;
  source: string;
  schema: string;
  widget: unknown;
}): JSX.Element {
  const { model, source, schema } = props;
  const key = PanelModel.key('d', source, schema);
  const open = model.expanded.has(key);
  const load = model.tables.get(key);
  const filter = model.filter.toLowerCase();
  const tables = (load?.value ?? []).filter(
    t => !filter || t.table.toLowerCase().includes(filter)
  );
  return (
    <li className="ldw-schema" data-schema={schema}>
      <Toggle open={open} label={`${source}.${schema}`} onToggle={() => void model.toggle(key)}>
        <span className="ldw-name">{schema}</span>
        {load?.value && (
          <span className="ldw-count">
            {filter ? `${tables.length}/${load.value.length}` : load.value.length}
          </span>
        )}
      </Toggle>
      {open && load?.loading && <div className="ldw-empty">listing tables…</div>}
      {open && load?.error && <div className="ldw-error">{load.error}</div>}
      {open && load?.value && (
        <ul className="ldw-tables">
          {load.value.length === 0 && <li className="ldw-empty">no tables you may read</li>}
          {tables.map(t => (
            <TableNode key={t.table} table={t} {...props} />
          ))}
        </ul>
      )}
    </li>
  );
}

function SourceNode(props: {
  model: PanelModel;
  host: IPanelHost;
  source: string;
  dialect: string;
  widget: unknown;
}): JSX.Element {
  const { model, source, dialect } = props;
  const key = PanelModel.key('s', source);
  const open = model.expanded.has(key);
  const load = model.schemas.get(key);
  return (
    <li className="ldw-source" data-source={source}>
      <Toggle open={open} label={`source ${source}`} onToggle={() => void model.toggle(key)}>
        <span className="ldw-name">{source}</span>
        <span className="ldw-dialect">{dialect}</span>
      </Toggle>
      {open && load?.loading && <div className="ldw-empty">listing schemas…</div>}
      {open && load?.error && <div className="ldw-error">{load.error}</div>}
      {open && load?.value && (
        <ul className="ldw-schemas">
          {load.value.map(schema => (
            <SchemaNode key={schema} schema={schema} {...props} />
          ))}
        </ul>
      )}
    </li>
  );
}

function Catalog(props: { model: PanelModel; host: IPanelHost; widget: unknown }): JSX.Element {
  const { model } = props;
  const sources = model.sources;
  return (
    <section className="ldw-section" aria-label="catalog">
      <h3 className="ldw-section-title">Catalog</h3>
      {sources.error && <div className="ldw-error">{sources.error}</div>}
      {sources.loading && !sources.value && <div className="ldw-empty">listing sources…</div>}
      <ul className="ldw-sources">
        {(sources.value ?? []).map(s => (
          <SourceNode key={s.name} source={s.name} dialect={s.dialect} {...props} />
        ))}
      </ul>
    </section>
  );
}

function Sidebar(props: { model: PanelModel; host: IPanelHost; widget: unknown }): JSX.Element {
  const { model } = props;
  const status = model.status;
  return (
    <div className="ldw-sidebar">
      <header className="ldw-header">
        <span className="ldw-title">ldw</span>
        <span className="ldw-where" title={status?.where ?? ''}>
          {status ? `${status.user} · ${status.where}` : model.statusError}
        </span>
        <button
          className="ldw-icon-button"
          aria-label="reload sources and datasets"
          title="Reload sources and datasets"
          onClick={() => void model.reload()}
        >
          <refreshIcon.react tag="span" />
        </button>
      </header>
      <div className="ldw-search">
        <searchIcon.react tag="span" className="ldw-search-icon" />
        <input
          type="search"
          className="ldw-search-input"
          placeholder="Filter datasets and tables"
          aria-label="filter datasets and tables"
          value={model.filter}
          onChange={e => model.setFilter(e.target.value)}
        />
      </div>
      {model.message && (
        <div
          className={`ldw-message${model.message.error ? ' ldw-message-error' : ''}`}
          role="status"
        >
          {model.message.text}
        </div>
      )}
      <Datasets {...props} />
      <Catalog {...props} />
    </div>
  );
}

/** The sidebar widget; it polls only while shown. */
export class LdwSidebar extends ReactWidget {
  constructor(
    readonly model: PanelModel,
    private readonly _host: IPanelHost
  ) {
    super();
    this.id = 'ldw-sidebar';
    this.addClass('ldw-Panel');
    this.title.icon = ldwIcon;
    this.title.caption = 'ldw: catalog and datasets';
  }

  focusSearch(): void {
    const input = this.node.querySelector<HTMLInputElement>('.ldw-search-input');
    input?.focus();
    input?.select();
  }

  protected onAfterShow(msg: LuminoMessage): void {
    super.onAfterShow(msg);
    this.model.setVisible(true);
  }

  protected onAfterHide(msg: LuminoMessage): void {
    super.onAfterHide(msg);
    this.model.setVisible(false);
  }

  protected onAfterAttach(msg: LuminoMessage): void {
    super.onAfterAttach(msg);
    if (this.isVisible) {
      this.model.setVisible(true);
    }
  }

  render(): JSX.Element {
    return (
      <UseSignal signal={this.model.changed}>
        {() => <Sidebar model={this.model} host={this._host} widget={this} />}
      </UseSignal>
    );
  }
}
