/**
 * ldw-jupyterlab: the "ldw" left sidebar, its commands (palette and keyboard), the preview tab
 * and the cells it inserts into notebooks. The data comes from the ldw server extension.
 */
import {
  ILayoutRestorer,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { ICommandPalette, InputDialog, Notification } from '@jupyterlab/apputils';
import { INotebookTracker } from '@jupyterlab/notebook';

import { api, IDataset, IJob, ITable } from './api';
import { variableName } from './format';
import { describeError, PanelModel } from './model';
import { IPanelHost, LdwSidebar, ldwIcon } from './panel';
import { PreviewWidget } from './preview';

const CATEGORY = 'ldw';

namespace CommandIDs {
  export const open = 'ldw:open';
  export const reload = 'ldw:reload';
  export const search = 'ldw:search';
  export const map = 'ldw:map';
  export const cache = 'ldw:cache';
  export const refresh = 'ldw:refresh';
  export const evict = 'ldw:evict';
  export const pin = 'ldw:pin';
  export const share = 'ldw:share';
  export const exportDataset = 'ldw:export';
  export const insert = 'ldw:insert';
  export const setup = 'ldw:insert-setup';
}

function codeCell(source: string): any {
  return { cell_type: 'code', source, metadata: {}, outputs: [], execution_count: null };
}

const CONNECTS = /%ldw\s+connect|ldw\.connect\(/;

function activate(
  app: JupyterFrontEnd,
  restorer: ILayoutRestorer | null,
  palette: ICommandPalette | null,
  notebooks: INotebookTracker | null
): void {
  const model = new PanelModel();
  const previews = new Map<string, PreviewWidget>();

  const notebookConnects = (): boolean => {
    const cells = notebooks?.currentWidget?.content.model?.sharedModel.cells ?? [];
    return cells.some(cell => CONNECTS.test(cell.getSource()));
  };

  const setupCell = () =>
    codeCell(model.status?.setup_code ?? '%load_ext ldw\n%ldw connect --as wh');

  const host: IPanelHost = {
    preview: (source, schema, table) => void openPreview(source, schema, table),
    mapTable: async (source, schema, table) => {
      const answer = await InputDialog.getText({
        title: `Map ${table.ref}`,
        label: 'Dataset name (also the notebook variable)',
        text: table.name
      });
      if (answer.button.accept && answer.value) {
        await model.map(answer.value.trim(), source, schema, table.table);
      }
    },
    share: async dataset => {
      const answer = await InputDialog.getText({
        title: `Share ${dataset.ref}`,
        label: 'With the user (or role:NAME)',
        placeholder: 'bob or role:risk'
      });
      const who = answer.value?.trim();
      if (answer.button.accept && who) {
        const args: Record<string, string> = who.startsWith('role:')
          ? { role: who.slice(5) }
          : { user: who };
        await model.act('share', dataset, args);
      }
    },
    exportDataset: async dataset => {
      const answer = await InputDialog.getText({
        title: `Export ${dataset.ref} as Parquet`,
        label: 'Folder (relative to the Jupyter root)',
        text: `exports/${dataset.name}`
      });
      const path = answer.value?.trim();
      if (answer.button.accept && path) {
        await model.act('export', dataset, { path });
      }
    },
    cellsFor: what => {
      const cells: any[] = notebookConnects() ? [] : [setupCell()];
      if (what.table) {
        cells.push(codeCell(`%ldw map ${what.table.name} = ${what.table.ref}`));
      } else if (what.dataset) {
        const d = what.dataset;
        cells.push(
          codeCell(
            d.mine
              ? `${variableName(d.name)} = wh.dataset(${JSON.stringify(d.name)})`
              : `${variableName(d.name)} = wh.attach(${JSON.stringify(d.ref)})`
          )
        );
      }
      return cells;
    },
    insert: cells => {
      const panel = notebooks?.currentWidget;
      if (!panel || !panel.content.model) {
        model.say('insert: open a notebook first', true);
        return;
      }
      const notebook = panel.content;
      const index = Math.max(notebook.activeCellIndex, -1) + 1;
      notebook.model!.sharedModel.insertCells(index, cells);
      notebook.activeCellIndex = index + cells.length - 1;
      app.shell.activateById(panel.id);
    }
  };

  async function openPreview(source: string, schema: string, table: ITable): Promise<void> {
    const ref = table.ref ?? table.table;
    let widget = previews.get(ref);
    if (!widget || widget.isDisposed) {
      widget = new PreviewWidget(ref, null);
      previews.set(ref, widget);
      app.shell.add(widget, 'main');
    }
    app.shell.activateById(widget.id);
    widget.setContent(null, '');
    try {
      widget.setContent(await api.preview(source, schema, table.table), '');
    } catch (error) {
      widget.setContent(null, describeError(error));
    }
  }

  model.onJobFinished = (job: IJob) => {
    const text =
      job.state === 'done'
        ? job.message || `${job.action} ${job.dataset}: done`
        : `${job.action} ${job.dataset} failed: ${job.message}`;
    model.say(text, job.state !== 'done');
    if (job.state === 'done') {
      Notification.success(`ldw: ${text}`, { autoClose: 4000 });
    } else {
      Notification.error(`ldw: ${text}`, { autoClose: false });
    }
  };

  const sidebar = new LdwSidebar(model, host);
  app.shell.add(sidebar, 'left', { rank: 600 });
  if (restorer) {
    restorer.add(sidebar, 'ldw-sidebar');
  }

  const pickDataset = async (args: any, mineOnly = true): Promise<IDataset | null> => {
    const wanted = (args?.dataset as string) ?? model.selected;
    const candidates = model.datasets.filter(d => d.mine || !mineOnly);
    const found = candidates.find(d => d.ref === wanted);
    if (found) {
      return found;
    }
    if (!candidates.length) {
      model.say('no datasets yet: map a table first', true);
      return null;
    }
    const answer = await InputDialog.getItem({
      title: 'Which dataset?',
      items: candidates.map(d => d.ref)
    });
    return answer.button.accept
      ? (candidates.find(d => d.ref === answer.value) ?? null)
      : null;
  };

  const commands = app.commands;
  commands.addCommand(CommandIDs.open, {
    label: 'Open the ldw Panel',
    icon: ldwIcon,
    execute: () => {
      app.shell.activateById(sidebar.id);
      sidebar.focusSearch();
    }
  });
  commands.addCommand(CommandIDs.search, {
    label: 'Search the ldw Catalog',
    execute: () => {
      app.shell.activateById(sidebar.id);
      sidebar.focusSearch();
    }
  });
  commands.addCommand(CommandIDs.reload, {
    label: 'Reload ldw Sources and Datasets',
    execute: () => model.reload()
  });
  commands.addCommand(CommandIDs.map, {
    label: 'Map a Table as an ldw Dataset…',
    execute: async () => {
      const answer = await InputDialog.getText({
        title: 'Map a table',
        label: 'Table (SOURCE.SCHEMA.TABLE)',
        placeholder: 'dwh.sales.orders'
      });
      const parts = (answer.value ?? '').trim().split('.');
      if (!answer.button.accept || parts.length < 2 || parts.length > 3) {
        if (answer.button.accept) {
          model.say('map: write the table as SOURCE.SCHEMA.TABLE', true);
        }
        return;
      }
      const [source, schema, table] =
        parts.length === 3 ? parts : [parts[0], '', parts[1]];
      const name = variableName(table);
      await host.mapTable(source, schema, {
        schema,
        table,
        kind: 'table',
        rows: null,
        ref: parts.join('.'),
        name
      });
    }
  });
  const datasetCommand = (id: string, label: string, action: string) =>
    commands.addCommand(id, {
      label,
      execute: async args => {
        const dataset = await pickDataset(args, action !== 'export');
        if (!dataset) {
          return;
        }
        model.select(dataset.ref);
        if (action === 'share') {
          await host.share(dataset);
        } else if (action === 'export') {
          await host.exportDataset(dataset);
        } else if (action === 'pin') {
          await model.act(dataset.pinned ? 'unpin' : 'pin', dataset);
        } else {
          await model.act(action, dataset);
        }
      }
    });
  datasetCommand(CommandIDs.cache, 'Cache the ldw Dataset', 'cache');
  datasetCommand(CommandIDs.refresh, 'Refresh the ldw Dataset', 'refresh');
  datasetCommand(CommandIDs.evict, 'Evict the ldw Dataset', 'evict');
  datasetCommand(CommandIDs.pin, 'Pin or Unpin the ldw Dataset', 'pin');
  datasetCommand(CommandIDs.share, 'Share the ldw Dataset…', 'share');
  datasetCommand(CommandIDs.exportDataset, 'Export the ldw Dataset as Parquet…', 'export');
  commands.addCommand(CommandIDs.insert, {
    label: 'Insert a Cell for the ldw Dataset',
    execute: async args => {
      const dataset = await pickDataset(args, false);
      if (dataset) {
        host.insert(host.cellsFor({ dataset }));
      }
    }
  });
  commands.addCommand(CommandIDs.setup, {
    label: 'Insert the ldw Connect Cell',
    execute: () => host.insert([setupCell()])
  });

  commands.addKeyBinding({
    command: CommandIDs.open,
    keys: ['Alt Shift W'],
    selector: 'body'
  });
  if (palette) {
    for (const command of Object.values(CommandIDs)) {
      palette.addItem({ command, category: CATEGORY });
    }
  }
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'ldw-jupyterlab:plugin',
  description: 'The ldw side panel: catalog, datasets and the shared cache in view.',
  autoStart: true,
  optional: [ILayoutRestorer, ICommandPalette, INotebookTracker],
  activate
};

export default plugin;
